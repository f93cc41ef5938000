"""The chaos checker: the failover's safety claims, judged after a trial.

Input is what a trial leaves: the bucket (every zone's commit log, the objects its entries
name, the primary record) read by :func:`read_bucket`, and the :class:`TrialHistory` the engine
observed while it ran (agents seen leading at the same moment, primary records seen, finished
activations with the target Pinot's segments at completion). :func:`check` is pure, so the
unit tests feed it hand-built logs that break each invariant.

Invariants (``Violation.invariant``):

``one-primary``
    At most one primary per term. Entries carry ``term`` (0 while the agent writes none):
    data entries of one term > 0 come from one zone; a leader session of one zone (a writer's
    entries under one epoch) never writes data while a session of another zone with the same
    term is open (from its first entry to its last data entry, on the trial's shared clock); no
    two agents of different zones were seen leading at once with the same term, each holding
    its zone's lease in the bucket; the primary record, when there is one, named one zone per
    term, and data entries of a term come from the zone it named.
``fencing``
    Along each zone's log ``(term, epoch)`` never decreases: nothing was written under a stale
    term or epoch once a newer one had written (a zombie that woke up was refused).
``objects``
    Every committed entry's object is readable and holds the bytes its entry recorded (SHA-256,
    size), unless a later entry retired it (``dump-deleted``).
``restore``
    An activation that finished restored exactly what was committed up to its handover: every
    segment committed in the source log before the activation's fence is in the target Pinot
    with the same CRC, and it uploaded nothing that was not committed there.
``log``
    Each log is readable: numbered from 1 without gaps, every entry parses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from az_agent.drivers.errors import DriverError, NotFound
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import (
    DumpDeletedPayload,
    DumpPayload,
    FencePayload,
    LogCorrupted,
    LogEntry,
    SchemaPayload,
    SegmentPayload,
    TableConfigPayload,
)
from az_agent.state.keys import LOG_SUFFIX, log_prefix, parse_seq

ONE_PRIMARY = "one-primary"
FENCING = "fencing"
OBJECTS = "objects"
RESTORE = "restore"
LOG = "log"
INVARIANTS = (ONE_PRIMARY, FENCING, OBJECTS, RESTORE, LOG)

DATA_KINDS = frozenset({"segment", "dump", "dump-deleted", "table-config", "schema"})
"""Entries only a primary writes: its backups. Fences, ``paused`` and ``resumed`` are control."""
PRIMARY_KEY = "primary/{group}.json"
SHOWN = 5
"""Examples named per violation; the count says how many there were."""
READ_CONCURRENCY = 16

SegmentKey = tuple[str, str]
"""(table with type, segment name)."""


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    description: str
    seed: int | None = None

    def __str__(self) -> str:
        where = f"seed {self.seed}: " if self.seed is not None else ""
        return f"{where}[{self.invariant}] {self.description}"


def term_of(entry: LogEntry) -> int:
    """The entry's term; 0 for entries (and agents) from before terms existed."""
    return int(getattr(entry, "term", 0) or 0)


def order_of(entry: LogEntry) -> tuple[int, int]:
    return (term_of(entry), entry.epoch)


# ------------------------------------------------------------------------------- the inputs


@dataclass(frozen=True, slots=True)
class ObjectRead:
    """One object a log entry names, as read back at the end of the trial."""

    key: str
    sha256: str | None = None
    size: int | None = None
    error: str | None = None


@dataclass
class BucketSnapshot:
    logs: dict[str, list[LogEntry]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Unreadable entries and gaps met while reading the logs."""
    objects: dict[str, ObjectRead] = field(default_factory=dict)
    primary: dict[str, Any] | None = None
    """``primary/<group>.json`` at the end, as JSON; None when absent."""


@dataclass(frozen=True, slots=True)
class LeaderSample:
    """An agent seen leading: ACTIVE, its keeper leader, its zone's lease naming it."""

    at: float
    zone: str
    agent: str
    epoch: int | None
    term: int = 0


@dataclass(frozen=True, slots=True)
class PrimarySample:
    at: float
    zone: str
    term: int


@dataclass
class ActivationRecord:
    """An activation the engine saw succeed, and the target Pinot right then."""

    operation: str
    agent: str
    target: str
    source: str
    epoch: int | None
    """The epoch of the fence it wrote in the source log (its journal's ``epoch``)."""
    finished_at: float
    pinot: dict[SegmentKey, str] = field(default_factory=dict)
    """Segments with a CRC in the target Pinot when the activation was seen finished."""
    uploads: set[SegmentKey] = field(default_factory=set)
    """Segments the activation uploaded into the target Pinot."""


@dataclass
class TrialHistory:
    leaders: list[tuple[LeaderSample, ...]] = field(default_factory=list)
    """Moments at which agents of two or more zones were seen leading."""
    primaries: list[PrimarySample] = field(default_factory=list)
    activations: list[ActivationRecord] = field(default_factory=list)


# ------------------------------------------------------------------------------ reading


async def read_bucket(
    store: ObjectStore, zones: Sequence[str], group: str = "default"
) -> BucketSnapshot:
    """Every zone's log, every object its entries name, and the primary record."""
    snapshot = BucketSnapshot()
    limit = asyncio.Semaphore(READ_CONCURRENCY)
    for zone in zones:
        snapshot.logs[zone] = await _read_log(store, zone, snapshot.problems, limit)
    keys = {
        key
        for entries in snapshot.logs.values()
        for entry in entries
        if (key := _object_key(entry)) is not None
    }
    reads = await asyncio.gather(*(_read_object(store, key, limit) for key in sorted(keys)))
    snapshot.objects = {read.key: read for read in reads}
    try:
        data, _ = await store.get(PRIMARY_KEY.format(group=group))
    except NotFound:
        snapshot.primary = None
    else:
        try:
            snapshot.primary = json.loads(data)
        except ValueError as exc:
            snapshot.problems.append(f"primary/{group}.json is not JSON: {exc}")
    return snapshot


async def _read_log(
    store: ObjectStore, zone: str, problems: list[str], limit: asyncio.Semaphore
) -> list[LogEntry]:
    prefix = log_prefix(zone)
    listed = [
        seq
        async for info in store.list(prefix)
        if (seq := parse_seq(info.key, prefix, LOG_SUFFIX)) is not None
    ]
    seqs = sorted(listed)
    missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs)) if seqs else []
    if missing:
        problems.append(f"zone {zone}: log has gaps at {_some(missing)}")

    async def one(seq: int) -> LogEntry | None:
        key = f"{prefix}{seq:020d}{LOG_SUFFIX}"
        async with limit:
            try:
                data, _ = await store.get(key)
                entry = LogEntry.decode(data, key)
            except (DriverError, LogCorrupted) as exc:
                problems.append(f"zone {zone}: entry {seq} unreadable: {exc}")
                return None
        if entry.seq != seq:
            problems.append(f"zone {zone}: {key} holds entry number {entry.seq}")
            return None
        return entry

    entries = await asyncio.gather(*(one(seq) for seq in seqs))
    return [entry for entry in entries if entry is not None]


async def _read_object(store: ObjectStore, key: str, limit: asyncio.Semaphore) -> ObjectRead:
    async with limit:
        try:
            data, _ = await store.get(key)
        except DriverError as exc:
            return ObjectRead(key, error=f"{type(exc).__name__}: {exc}")
    return ObjectRead(key, hashlib.sha256(data).hexdigest(), len(data))


def _object_key(entry: LogEntry) -> str | None:
    payload = entry.payload
    if isinstance(payload, SegmentPayload | DumpPayload | TableConfigPayload | SchemaPayload):
        return payload.key
    return None


# ------------------------------------------------------------------------------ checking


def check(
    bucket: BucketSnapshot, history: TrialHistory, seed: int | None = None
) -> list[Violation]:
    """Every violation of every invariant (see the module docstring), in a stable order."""
    found = [
        *check_logs(bucket),
        *check_one_primary(bucket, history),
        *check_fencing(bucket),
        *check_objects(bucket),
        *check_restores(bucket, history),
    ]
    return [Violation(v.invariant, v.description, seed) for v in found]


def check_logs(bucket: BucketSnapshot) -> list[Violation]:
    return [Violation(LOG, problem) for problem in bucket.problems]


def check_fencing(bucket: BucketSnapshot) -> list[Violation]:
    found = []
    for zone, entries in sorted(bucket.logs.items()):
        highest: LogEntry | None = None
        stale = []
        for entry in entries:
            if highest is not None and order_of(entry) < order_of(highest):
                stale.append(
                    f"entry {entry.seq} ({entry.payload.kind} by {entry.writer}, term "
                    f"{term_of(entry)}, epoch {entry.epoch}) after entry {highest.seq} (term "
                    f"{term_of(highest)}, epoch {highest.epoch}, by {highest.writer})"
                )
            elif highest is None or order_of(entry) > order_of(highest):
                highest = entry
        if stale:
            found.append(
                Violation(
                    FENCING,
                    f"zone {zone}: {len(stale)} entries written under a stale (term, epoch): "
                    + _some(stale),
                )
            )
    return found


def check_objects(bucket: BucketSnapshot) -> list[Violation]:
    found = []
    for zone, entries in sorted(bucket.logs.items()):
        retired = {
            (e.payload.database, e.payload.dump_seq)
            for e in entries
            if isinstance(e.payload, DumpDeletedPayload)
        }
        rewritten: dict[str, int] = {}
        for entry in entries:
            if (key := _object_key(entry)) is not None:
                rewritten[key] = entry.seq  # the last entry naming each key
        bad = []
        for entry in entries:
            payload = entry.payload
            key = _object_key(entry)
            if key is None:
                continue
            if isinstance(payload, DumpPayload) and (payload.database, entry.seq) in retired:
                continue
            problem = _object_problem(entry, bucket.objects.get(key))
            if problem is not None:
                later = rewritten[key]
                if later != entry.seq:
                    problem += f" (entry {later} names the same key: it was rewritten)"
                bad.append(f"entry {entry.seq} ({payload.kind}) {key}: {problem}")
        if bad:
            found.append(
                Violation(
                    OBJECTS,
                    f"zone {zone}: {len(bad)} committed objects do not hold what their entry "
                    "recorded: " + _some(bad),
                )
            )
    return found


def _object_problem(entry: LogEntry, read: ObjectRead | None) -> str | None:
    payload = entry.payload
    assert isinstance(payload, SegmentPayload | DumpPayload | TableConfigPayload | SchemaPayload)
    if read is None:
        return "never read"
    if read.error is not None:
        return f"unreadable: {read.error}"
    if read.sha256 != payload.sha256:
        return f"SHA-256 {read.sha256}, the entry recorded {payload.sha256}"
    size = getattr(payload, "size", None)
    if size is not None and read.size != size:
        return f"{read.size} bytes, the entry recorded {size}"
    return None


# -- one primary per term -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """One writer's entries under one epoch in one zone's log: a leadership, seen from the log."""

    zone: str
    writer: str
    epoch: int
    term: int
    start: float
    """Wall time (trial clock, seconds) of its first entry."""
    last_data: float
    first_seq: int
    last_seq: int
    data: int


def sessions(bucket: BucketSnapshot) -> list[Session]:
    """The data-writing sessions of every zone's log."""
    grouped: dict[tuple[str, str, int], list[LogEntry]] = defaultdict(list)
    for zone, entries in bucket.logs.items():
        for entry in entries:
            grouped[(zone, entry.writer, entry.epoch)].append(entry)
    found = []
    for (zone, writer, epoch), entries in grouped.items():
        data = [e for e in entries if e.payload.kind in DATA_KINDS]
        if not data:
            continue
        found.append(
            Session(
                zone=zone,
                writer=writer,
                epoch=epoch,
                term=max(term_of(e) for e in data),
                start=min(e.time.timestamp() for e in entries),
                last_data=max(e.time.timestamp() for e in data),
                first_seq=min(e.seq for e in entries),
                last_seq=max(e.seq for e in data),
                data=len(data),
            )
        )
    return sorted(found, key=lambda s: (s.start, s.zone, s.writer))


def check_one_primary(bucket: BucketSnapshot, history: TrialHistory) -> list[Violation]:
    return [
        *_data_zones_per_term(bucket),
        *_overlapping_sessions(bucket),
        *_leaders_seen_together(history),
        *_primary_record(bucket, history),
    ]


def _data_zones_per_term(bucket: BucketSnapshot) -> list[Violation]:
    zones: dict[int, set[str]] = defaultdict(set)
    for zone, entries in bucket.logs.items():
        for entry in entries:
            if entry.payload.kind in DATA_KINDS and term_of(entry) > 0:
                zones[term_of(entry)].add(zone)
    return [
        Violation(ONE_PRIMARY, f"term {term}: zones {sorted(names)} all wrote backups")
        for term, names in sorted(zones.items())
        if len(names) > 1
    ]


def _overlapping_sessions(bucket: BucketSnapshot) -> list[Violation]:
    found = []
    ordered = sessions(bucket)
    for index, first in enumerate(ordered):
        for second in ordered[index + 1 :]:
            if second.start > first.last_data:
                break  # sorted by start: no later session overlaps ``first`` either
            if second.zone == first.zone or second.term != first.term:
                continue
            found.append(
                Violation(
                    ONE_PRIMARY,
                    f"two primaries in term {first.term}: zone {first.zone} ({first.writer}, "
                    f"epoch {first.epoch}, entries {first.first_seq}-{first.last_seq}) still "
                    f"wrote backups {first.last_data - second.start:.2f}s after zone "
                    f"{second.zone} started leading ({second.writer}, epoch {second.epoch}, "
                    f"entries {second.first_seq}-{second.last_seq}, {second.data} backups)",
                )
            )
    return found


def _leaders_seen_together(history: TrialHistory) -> list[Violation]:
    clashes: dict[tuple[tuple[str, str, int | None], ...], list[float]] = defaultdict(list)
    for moment in history.leaders:
        by_term: dict[int, list[LeaderSample]] = defaultdict(list)
        for sample in moment:
            by_term[sample.term].append(sample)
        for same in by_term.values():
            if len({s.zone for s in same}) > 1:
                key = tuple(sorted((s.zone, s.agent, s.epoch) for s in same))
                clashes[key].append(same[0].at)
    found = []
    for key, times in clashes.items():
        who = ", ".join(f"{agent} (zone {zone}, epoch {epoch})" for zone, agent, epoch in key)
        found.append(
            Violation(
                ONE_PRIMARY,
                f"{who} led at the same time with the same term, each holding its zone's "
                f"lease, seen {len(times)} times from t={min(times):.2f}s to t={max(times):.2f}s",
            )
        )
    return found


def _primary_record(bucket: BucketSnapshot, history: TrialHistory) -> list[Violation]:
    named: dict[int, set[str]] = defaultdict(set)
    for sample in history.primaries:
        named[sample.term].add(sample.zone)
    final = bucket.primary
    if final is not None and "term" in final and "zone" in final:
        named[int(final["term"])].add(str(final["zone"]))
    found = [
        Violation(ONE_PRIMARY, f"the primary record named zones {sorted(zones)} for term {term}")
        for term, zones in sorted(named.items())
        if len(zones) > 1
    ]
    wrong: dict[tuple[str, int], int] = defaultdict(int)
    for zone, entries in bucket.logs.items():
        for entry in entries:
            term = term_of(entry)
            if (
                entry.payload.kind in DATA_KINDS
                and term > 0
                and zone not in named.get(term, {zone})
            ):
                wrong[(zone, term)] += 1
    found += [
        Violation(
            ONE_PRIMARY,
            f"zone {zone} wrote {count} backups under term {term}, whose primary record "
            f"named {sorted(named[term])}",
        )
        for (zone, term), count in sorted(wrong.items())
    ]
    return found


# -- restores -------------------------------------------------------------------------------


def committed_before(entries: Iterable[LogEntry], seq: int) -> dict[SegmentKey, str]:
    """Segments committed in a log before entry ``seq``: (table, segment) -> CRC (newest)."""
    committed: dict[SegmentKey, str] = {}
    for entry in entries:
        payload = entry.payload
        if entry.seq < seq and isinstance(payload, SegmentPayload):
            committed[(payload.table, payload.segment)] = payload.crc
    return committed


def check_restores(bucket: BucketSnapshot, history: TrialHistory) -> list[Violation]:
    found = []
    for activation in history.activations:
        problem = _restore_problem(bucket, activation)
        if problem is not None:
            found.append(
                Violation(
                    RESTORE,
                    f"activation {activation.operation} of zone {activation.target} from "
                    f"{activation.source} (agent {activation.agent}): {problem}",
                )
            )
    return found


def _fence_of(bucket: BucketSnapshot, activation: ActivationRecord) -> LogEntry | None:
    """The fence the activation wrote in its source's log (found by its epoch)."""
    return next(
        (
            e
            for e in bucket.logs.get(activation.source, [])
            if isinstance(e.payload, FencePayload) and e.epoch == activation.epoch
        ),
        None,
    )


def coverage(bucket: BucketSnapshot, history: TrialHistory) -> dict[str, int]:
    """How much the checker looked at: entries, objects, activations and segments owed."""
    owed = 0
    for activation in history.activations:
        fence = _fence_of(bucket, activation) if activation.epoch is not None else None
        if fence is not None:
            owed += len(committed_before(bucket.logs.get(activation.source, []), fence.seq))
    return {
        "entries": sum(len(entries) for entries in bucket.logs.values()),
        "objects": len(bucket.objects),
        "activations": len(history.activations),
        "segments owed": owed,
        "leader overlaps": len(history.leaders),
        "primary samples": len(history.primaries),
    }


def _restore_problem(bucket: BucketSnapshot, activation: ActivationRecord) -> str | None:
    if activation.epoch is None:
        return "succeeded without recording the epoch of its fence"
    entries = bucket.logs.get(activation.source, [])
    fence = _fence_of(bucket, activation)
    if fence is None:
        return f"no fence with epoch {activation.epoch} in zone {activation.source}'s log"
    committed = committed_before(entries, fence.seq)
    missing = [
        f"{table}/{segment} (CRC {crc}, Pinot has {activation.pinot.get((table, segment))})"
        for (table, segment), crc in sorted(committed.items())
        if activation.pinot.get((table, segment)) != crc
    ]
    extra = [f"{t}/{s}" for t, s in sorted(activation.uploads) if (t, s) not in committed]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} of {len(committed)} segments committed before its fence (entry "
            f"{fence.seq}) are not in the target Pinot: {_some(missing)}"
        )
    if extra:
        problems.append(
            f"restored {len(extra)} segments not committed before its fence (entry "
            f"{fence.seq}): {_some(extra)}"
        )
    return "; ".join(problems) or None


def _some(items: Sequence[Any]) -> str:
    shown = ", ".join(str(item) for item in items[:SHOWN])
    return shown + (f", ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else "")
