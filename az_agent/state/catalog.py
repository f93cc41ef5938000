"""The catalog: what a zone's backup holds, rebuilt from its checkpoint and commit log.

It answers what the rest of the agent asks: every segment backed up (the latest CRC of each
(table, segment), earlier CRCs kept for "as of" questions; a segment Pinot deleted stops being
live at its ``segment-deleted`` entry and is forgotten at its ``segments-purged`` one), every
database dump, table configs
and schemas, the last handover, the term, epoch and sequence number reached. "As of T" means the
state of the backup at T: records whose log entry was committed at or before T.

Entries must be applied in sequence order without gaps; entries already applied are ignored,
so a writer can apply its own appends and later catch up from the bucket without double work.

Segments live in two layers: per table, packed :class:`~az_agent.state.columns.SegmentColumns`
as of the checkpoint loaded (no Python object per segment: a million take ~160 MB), and beside
them the versions added since (``_added``) and the names purged since (``_hidden``). Writing a
checkpoint merges the layers into new columns, and installs them when nothing changed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from az_agent.drivers.storage.base import ObjectStore
from az_agent.state.backups import (
    ConfigRecord,
    DumpRecord,
    Row,
    SegmentDeletion,
    SegmentRecord,
)
from az_agent.state.columns import ColumnsBuilder, SegmentColumns, merge
from az_agent.state.entries import (
    DumpDeletedPayload,
    DumpPayload,
    FencePayload,
    LogEntry,
    PausedPayload,
    ResumedPayload,
    SchemaPayload,
    SegmentDeletedPayload,
    SegmentPayload,
    SegmentsPurgedPayload,
    TableConfigPayload,
)
from az_agent.state.errors import LogCorrupted
from az_agent.state.keys import check_zone
from az_agent.state.log import read_entries

log = logging.getLogger(__name__)

Record = SegmentRecord | DumpRecord | ConfigRecord | SegmentDeletion
OtherRecord = DumpRecord | ConfigRecord | SegmentDeletion
_S = TypeVar("_S")
COMPACT_AFTER = 20_000
"""Loose segment versions (objects) a following catalog packs into columns, at the least."""


def _cutoff(as_of: datetime | None) -> float:
    return float("inf") if as_of is None else as_of.timestamp()


@dataclass(frozen=True, slots=True)
class TableSnapshot:
    """One table's segments: packed columns (never mutated) and copies of the layers above."""

    table: str
    columns: SegmentColumns | None
    added: dict[str, list[SegmentRecord]]
    hidden: frozenset[str]

    def merged(self) -> SegmentColumns | None:
        """The table as one set of columns (CPU-bound at scale: call it in a thread)."""
        return merge(self.table, self.columns, self.added, self.hidden)


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """An immutable view for a checkpoint writer, taken in O(changes since the last
    checkpoint) pointer copies: the packed columns are shared, not copied."""

    zone: str
    seq: int
    epoch: int
    tables: list[TableSnapshot]
    records: list[OtherRecord]
    events: list[LogEntry]
    term: int = 0
    changes: int = field(default=0, compare=False)
    """The catalog's segment change counter when taken (see :meth:`Catalog.install`)."""


class _NameView(AbstractSet[str]):
    """The names of one table's segments, live (see :meth:`Catalog.segment_names`)."""

    def __init__(self, catalog: Catalog, table: str) -> None:
        self._catalog, self._table = catalog, table

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._catalog._holds(self._table, name)

    def __iter__(self) -> Iterator[str]:
        return self._catalog._current_names(self._table)

    def __len__(self) -> int:
        return self._catalog._names.get(self._table, 0)

    @classmethod
    def _from_iterable(cls, iterable: Iterable[_S]) -> AbstractSet[_S]:
        """What the set operators (``view - names``) build: a plain set."""
        return set(iterable)


class Catalog:
    """In-memory catalog of one zone; see the module docstring for its rules."""

    def __init__(self, zone: str) -> None:
        self.zone = sys.intern(check_zone(zone))
        self.last_seq = 0
        self.checkpoint_seq = 0
        """The newest checkpoint this catalog was read from or written as (0: none): a reader
        GETs each entry after it, so a leader checkpoints when many follow it."""
        self.epoch = 0
        self.term = 0
        """Term and epoch of the last entry applied (0 for logs from before terms)."""
        self.anomalies = 0
        """Entries skipped because their (term, epoch) went backwards (must stay 0)."""
        self.last_paused: LogEntry | None = None
        self.last_fence: LogEntry | None = None
        self.last_resumed: LogEntry | None = None
        self._columns: dict[str, SegmentColumns] = {}
        self._added: dict[str, dict[str, list[SegmentRecord]]] = {}
        self._hidden: dict[str, set[str]] = {}
        self._names: dict[str, int] = {}  # table -> segment names held (live or deleted)
        self._changes = 0  # segment changes applied, to know whether a merge is still current
        self._restoring: dict[str, ColumnsBuilder] = {}
        self._pending: SegmentRecord | None = None  # a version-1 checkpoint row, see apply_row
        self._deleted: dict[tuple[str, str], SegmentDeletion] = {}
        self._dumps: dict[str, dict[int, DumpRecord]] = {}
        self._configs: dict[str, list[ConfigRecord]] = {}
        self._schemas: dict[str, list[ConfigRecord]] = {}
        self._other_keys: set[str] | None = None  # keys not derivable from a segment name

    # -- building -------------------------------------------------------------------------

    def apply(self, entry: LogEntry) -> bool:
        """Apply the next entry; False when it was already applied or had to be skipped."""
        if entry.seq <= self.last_seq:
            return False
        if entry.seq != self.last_seq + 1:
            raise LogCorrupted(
                f"zone {self.zone}: entry {entry.seq} follows {self.last_seq}: a gap in the log"
            )
        self.last_seq = entry.seq
        if entry.order < (self.term, self.epoch):  # the writers' fencing order, see log.py
            self.anomalies += 1
            log.critical(
                "zone %s: entry %d has term %d, epoch %d after term %d, epoch %d; ignored "
                "(fencing was violated)",
                self.zone,
                entry.seq,
                entry.term,
                entry.epoch,
                self.term,
                self.epoch,
            )
            return False
        self.term, self.epoch = entry.term, entry.epoch
        self._apply_payload(entry)
        return True

    def _apply_payload(self, entry: LogEntry) -> None:
        payload = entry.payload
        if isinstance(payload, SegmentPayload):
            self._add_segment(SegmentRecord.from_entry(self.zone, entry, payload))
        elif isinstance(payload, DumpPayload):
            self._add_dump(DumpRecord.from_entry(entry, payload))
        elif isinstance(payload, DumpDeletedPayload):
            self._dumps.get(payload.database, {}).pop(payload.dump_seq, None)
            self._other_keys = None
        elif isinstance(payload, SegmentDeletedPayload):
            if self._current(payload.table, payload.segment) is not None:
                deletion = SegmentDeletion(
                    payload.table, payload.segment, entry.seq, entry.time.timestamp()
                )
                self._deleted.setdefault((payload.table, payload.segment), deletion)
        elif isinstance(payload, SegmentsPurgedPayload):
            for table, name in payload.segments:
                self._purge(table, name)
        elif isinstance(payload, TableConfigPayload | SchemaPayload):
            self._add_config(ConfigRecord.from_entry(entry, payload))
        elif isinstance(payload, PausedPayload):
            self.last_paused = entry
        elif isinstance(payload, FencePayload):
            self.last_fence = entry
        elif isinstance(payload, ResumedPayload):
            self.last_resumed = entry

    def _purge(self, table: str, name: str) -> None:
        """Forget a deleted segment (a live one, backed up again since, is kept)."""
        if self._deleted.pop((table, name), None) is None:
            return
        self._changes += 1
        added = self._added.get(table, {})
        added.pop(name, None)
        columns = self._columns.get(table)
        if columns is not None and columns.current_row(name) is not None:
            self._hidden.setdefault(table, set()).add(name)
        self._names[table] -= 1
        if not self._names[table]:
            for layer in (self._names, self._columns, self._added, self._hidden):
                layer.pop(table, None)
        self._other_keys = None

    def _current(self, table: str, name: str) -> SegmentRecord | None:
        """The newest version of a segment the catalog holds (deleted or not)."""
        added = self._added.get(table)
        if added is not None and (versions := added.get(name)):
            return versions[-1]
        columns = self._columns.get(table)
        if columns is None or name in self._hidden.get(table, ()):
            return None
        row = columns.current_row(name)
        return None if row is None else columns.record(self.zone, row)

    def _holds(self, table: str, name: str) -> bool:
        """Whether some version of the segment is held, without building its record."""
        if name in self._added.get(table, {}):
            return True
        columns = self._columns.get(table)
        if columns is None or name in self._hidden.get(table, ()):
            return False
        return columns.current_row(name) is not None

    def _current_names(self, table: str) -> Iterator[str]:
        added = self._added.get(table, {})
        columns = self._columns.get(table)
        if columns is not None:
            hidden = self._hidden.get(table, set())
            if added or hidden:
                for name in columns.current_names():
                    if name not in added and name not in hidden:
                        yield name
            else:
                yield from columns.current_names()
        yield from list(added)

    def _add_segment(self, record: SegmentRecord) -> None:
        current = self._current(record.table, record.name)
        revived = self._deleted.pop((record.table, record.name), None) is not None
        if current is not None and current.crc == record.crc and not revived:
            return  # the same bytes again: it has been part of the backup since the first
        self._changes += 1
        if current is None:
            self._names[record.table] = self._names.get(record.table, 0) + 1
        self._added.setdefault(record.table, {}).setdefault(record.name, []).append(record)
        if record.key_override is not None:
            self._other_keys = None

    def _add_dump(self, record: DumpRecord) -> None:
        self._dumps.setdefault(record.database, {})[record.seq] = record
        self._other_keys = None

    def _add_config(self, record: ConfigRecord) -> None:
        target = self._configs if record.kind == "table-config" else self._schemas
        target.setdefault(record.name, []).append(record)
        self._other_keys = None

    def apply_row(self, row: Row) -> None:
        """Restore one checkpoint row (rows come in the order :meth:`snapshot` lists them)."""
        tag = row[0]
        if tag == "s":
            self._restore_segment(SegmentRecord.from_row(self.zone, row))
            return
        self._flush_pending(None)
        if tag == "d":
            self._add_dump(DumpRecord.from_row(row))
        elif tag in ("t", "c"):
            self._add_config(ConfigRecord.from_row(row))
        elif tag == "x":
            deletion = SegmentDeletion.from_row(row)
            self._deleted[(deletion.table, deletion.name)] = deletion
        elif tag == "e":
            self._restore_event(LogEntry.model_validate(row[1]))
        else:
            raise ValueError(f"unknown checkpoint row {tag!r}")

    def apply_block(self, header: list[Any], raw: memoryview) -> None:
        """Restore a block of checkpoint segment rows (version 3, see ``columns.py``)."""
        self._flush_pending(None)
        table = sys.intern(str(header[1]))
        self._restoring.setdefault(table, ColumnsBuilder(table)).add_block(header, raw)

    def _restore_segment(self, record: SegmentRecord) -> None:
        """Version-1 rows list a segment's versions oldest first, the current one last, as
        they were (a version revived after a deletion may repeat the CRC of the one before
        it); a row is the current version when the next row names another segment."""
        self._flush_pending(record)
        self._pending = record

    def _flush_pending(self, following: SegmentRecord | None) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        last = following is None or (following.table, following.name) != (
            pending.table,
            pending.name,
        )
        builder = self._restoring.setdefault(pending.table, ColumnsBuilder(pending.table))
        builder.add(pending, last=last)

    def finish_restore(self) -> None:
        """Build the columns of the checkpoint rows applied (call once, after the last)."""
        self._flush_pending(None)
        for table, builder in sorted(self._restoring.items()):
            columns = builder.build()
            if columns.name_count:
                self._columns[table] = columns
                self._names[table] = columns.name_count
        self._restoring.clear()
        self._other_keys = None

    def _restore_event(self, entry: LogEntry) -> None:
        if isinstance(entry.payload, PausedPayload):
            self.last_paused = entry
        elif isinstance(entry.payload, FencePayload):
            self.last_fence = entry
        elif isinstance(entry.payload, ResumedPayload):
            self.last_resumed = entry

    def snapshot(self) -> CatalogSnapshot:
        """Everything needed to rebuild this catalog (see :meth:`rows` for the order)."""
        tables = [
            TableSnapshot(
                table,
                self._columns.get(table),
                {name: list(vs) for name, vs in self._added.get(table, {}).items()},
                frozenset(self._hidden.get(table, ())),
            )
            for table in sorted(self._names)
        ]
        deletions = sorted(self._deleted.values(), key=lambda d: (d.table, d.name))
        records: list[OtherRecord] = list(deletions)
        for database in sorted(self._dumps):
            records.extend(sorted(self._dumps[database].values(), key=lambda d: d.seq))
        for configs in (self._configs, self._schemas):
            for name in sorted(configs):
                records.extend(configs[name])
        events = [e for e in (self.last_fence, self.last_paused, self.last_resumed) if e]
        return CatalogSnapshot(
            self.zone, self.last_seq, self.epoch, tables, records, events, term=self.term,
            changes=self._changes,
        )  # fmt: skip

    def install(self, snapshot: CatalogSnapshot, merged: dict[str, SegmentColumns | None]) -> bool:
        """Replace the segment layers by ``merged`` (the snapshot's tables, merged), unless
        segments changed since the snapshot was taken; whether it was installed."""
        if snapshot.changes != self._changes or snapshot.zone != self.zone:
            return False
        for table, columns in merged.items():
            self._added.pop(table, None)
            self._hidden.pop(table, None)
            if columns is None:
                self._columns.pop(table, None)
            else:
                self._columns[table] = columns
        return True

    @property
    def loose(self) -> int:
        """Segment versions held as objects (~550 bytes each), not packed into columns yet."""
        return sum(len(versions) for added in self._added.values() for versions in added.values())

    def rows(self) -> Iterator[Row]:
        """The catalog as version-1 checkpoint rows, one per record; equal catalogs give equal
        rows (for tests: a checkpoint is written in blocks)."""
        snapshot = self.snapshot()
        deletions = {(d.table, d.name): d for d in self._deleted.values()}
        for table in snapshot.tables:
            columns = table.merged()
            for current in columns.current_rows() if columns is not None else ():
                assert columns is not None
                for row in columns.version_rows(current):
                    yield columns.record(self.zone, row).to_row()
                if (deletion := deletions.get((table.table, columns.name(current)))) is not None:
                    yield deletion.to_row()
        for record in snapshot.records:
            if not isinstance(record, SegmentDeletion):
                yield record.to_row()
        for event in snapshot.events:
            yield ["e", event.to_json()]

    # -- queries --------------------------------------------------------------------------

    @property
    def segment_count(self) -> int:
        """Live segments: backed up and not deleted from Pinot."""
        return sum(self._names.values()) - len(self._deleted)

    def tables(self) -> list[str]:
        """Tables with at least one segment in the catalog (live or deleted, not purged)."""
        return sorted(self._names)

    def segment_names(self, table: str) -> AbstractSet[str]:
        """Names of ``table``'s segments the catalog holds a version of, live or deleted from
        Pinot (not purged): a live view, so that a poll can set it against a listing of
        100,000 names without a record lookup per name."""
        return _NameView(self, table)

    def segment(self, table: str, name: str, as_of: datetime | None = None) -> SegmentRecord | None:
        """The version of one segment live in the backup as of ``as_of`` (default: now)."""
        current = self._current(table, name)
        return None if current is None else self._version_at(current, _cutoff(as_of))

    def deletions(self) -> list[SegmentDeletion]:
        """Segments deleted from Pinot whose objects are still kept, oldest deletion first."""
        return sorted(self._deleted.values(), key=lambda d: d.seq)

    def versions(self, table: str, name: str) -> list[SegmentRecord]:
        """Every version of one segment the catalog holds, deleted or not, oldest first."""
        versions: list[SegmentRecord] = []
        columns = self._columns.get(table)
        if columns is not None and name not in self._hidden.get(table, ()):
            row = columns.current_row(name)
            if row is not None:
                versions = [columns.record(self.zone, r) for r in columns.version_rows(row)]
        versions.extend(self._added.get(table, {}).get(name, ()))
        return versions

    def _version_at(self, current: SegmentRecord, cutoff: float) -> SegmentRecord | None:
        deletion = self._deleted.get((current.table, current.name))
        if deletion is not None and deletion.committed_ts <= cutoff:
            return None  # deleted from Pinot at or before the cutoff
        if current.committed_ts <= cutoff:
            return current
        older = self.versions(current.table, current.name)[:-1]
        for record in reversed(older):
            if record.committed_ts <= cutoff:
                return record
        return None

    def segments(
        self, as_of: datetime | None = None, *, table: str | None = None
    ) -> list[SegmentRecord]:
        """Every segment (its newest CRC as of ``as_of``), optionally of one table."""
        return list(self.iter_segments(as_of, table=table))

    def iter_segments(
        self, as_of: datetime | None = None, *, table: str | None = None
    ) -> Iterator[SegmentRecord]:
        """:meth:`segments` one record at a time, table by table in name order: a million
        records held at once take about 500 MB, which a plan that keeps a few fields of each
        need not pay."""
        cutoff = _cutoff(as_of)
        tables = [table] if table is not None else sorted(self._names)
        for name in tables:
            for current in self._currents(name):
                record = self._version_at(current, cutoff)
                if record is not None:
                    yield record

    def newest_segment_seq(self) -> int | None:
        """The highest ``seq`` of :meth:`segments` (the pause's handover), read from the
        packed numbers instead of building a million records."""
        deleted = self._deleted_names()
        newest: list[int] = []
        for table in self._names:
            added = self._added.get(table, {})
            gone = deleted.get(table, set())
            newest.extend(vs[-1].seq for name, vs in added.items() if name not in gone)
            columns = self._columns.get(table)
            if columns is not None:
                skip = gone | added.keys() | self._hidden.get(table, set())
                if (seq := columns.newest_seq(skip)) is not None:
                    newest.append(seq)
        return max(newest, default=None)

    def segment_crcs(self, table: str) -> dict[str, str]:
        """Name -> CRC of ``table``'s segments live now: what :meth:`segment` answers for each
        name, built a chunk at a time (a discovery scan compares a whole table at once)."""
        columns = self._columns.get(table)
        crcs = dict(columns.current_crcs()) if columns is not None else {}
        for name in self._hidden.get(table, ()):
            crcs.pop(name, None)
        for name, versions in self._added.get(table, {}).items():
            crcs[name] = versions[-1].crc
        for name in self._deleted_names().get(table, ()):
            crcs.pop(name, None)
        return crcs

    def live_tables(self, as_of: datetime | None = None) -> list[str]:
        """Tables with a segment live as of ``as_of``: :meth:`segments`' tables, without
        building them all (usually the first record of a table says so)."""
        cutoff = _cutoff(as_of)
        return [
            table
            for table in sorted(self._names)
            if any(self._version_at(r, cutoff) is not None for r in self._currents(table))
        ]

    def _deleted_names(self) -> dict[str, set[str]]:
        """Per table, the names deleted from Pinot and not purged yet."""
        names: dict[str, set[str]] = {}
        for table, name in self._deleted:
            names.setdefault(table, set()).add(name)
        return names

    def _currents(self, table: str) -> Iterator[SegmentRecord]:
        """The newest version of each segment of ``table``: packed ones (by name), then the
        ones added since."""
        added = self._added.get(table, {})
        columns = self._columns.get(table)
        if columns is not None:
            hidden = self._hidden.get(table, set())
            for row in columns.current_rows():
                if added or hidden:
                    name = columns.name(row)
                    if name in added or name in hidden:
                        continue
                yield columns.record(self.zone, row)
        for versions in added.values():
            yield versions[-1]

    def databases(self) -> list[str]:
        return sorted(db for db, dumps in self._dumps.items() if dumps)

    def dumps(self, database: str, as_of: datetime | None = None) -> list[DumpRecord]:
        """Restorable dumps of ``database`` committed by ``as_of``, oldest first."""
        cutoff = _cutoff(as_of)
        found = [d for d in self._dumps.get(database, {}).values() if d.committed_ts <= cutoff]
        return sorted(found, key=lambda d: d.seq)

    def newest_dump(self, database: str, as_of: datetime | None = None) -> DumpRecord | None:
        found = self.dumps(database, as_of)
        return found[-1] if found else None

    def table_configs(self, as_of: datetime | None = None) -> dict[str, ConfigRecord]:
        return self._newest_configs(self._configs, _cutoff(as_of))

    def schemas(self, as_of: datetime | None = None) -> dict[str, ConfigRecord]:
        return self._newest_configs(self._schemas, _cutoff(as_of))

    @staticmethod
    def _newest_configs(
        history: dict[str, list[ConfigRecord]], cutoff: float
    ) -> dict[str, ConfigRecord]:
        newest: dict[str, ConfigRecord] = {}
        for name, versions in history.items():
            kept = [v for v in versions if v.committed_ts <= cutoff]
            if kept:
                newest[name] = kept[-1]
        return newest

    def references(self, key: str) -> bool:
        """Whether any record (any version, any time) points at object ``key``."""
        if self._references_segment(key):
            return True
        if self._other_keys is None:
            self._other_keys = self._collect_other_keys()
        return key in self._other_keys

    def _collect_other_keys(self) -> set[str]:
        keys = {
            record.key_override
            for added in self._added.values()
            for versions in added.values()
            for record in versions
            if record.key_override is not None
        }
        for table, columns in self._columns.items():
            hidden = self._hidden.get(table, set())
            for row, extra in columns.extras.items():
                if "key" in extra and (not hidden or columns.name(row) not in hidden):
                    keys.add(extra["key"])
        keys.update(d.key for dumps in self._dumps.values() for d in dumps.values())
        keys.update(
            c.key
            for history in (self._configs, self._schemas)
            for vs in history.values()
            for c in vs
        )
        return keys

    def _references_segment(self, key: str) -> bool:
        parts = key.split("/")
        if len(parts) != 5 or parts[:2] != [self.zone, "segments"]:
            return False
        if not parts[4].endswith(".tar.gz"):
            return False
        _, _, table, name, file = parts
        versions = self.versions(table, name)
        crc = file[: -len(".tar.gz")]
        return any(v.crc == crc and v.object_key == key for v in versions)

    def describe(self) -> dict[str, Any]:
        """A small summary for logs and ``/status``."""
        return {
            "zone": self.zone,
            "seq": self.last_seq,
            "epoch": self.epoch,
            "term": self.term,
            "segments": self.segment_count,
            "dumps": sum(len(d) for d in self._dumps.values()),
            "tableConfigs": len(self._configs),
            "schemas": len(self._schemas),
        }


async def apply_committed(store: ObjectStore, catalog: Catalog, entry: LogEntry) -> None:
    """Apply an entry this agent just appended, first reading any the catalog lacks before it.

    ``LogWriter`` may commit past entries the catalog has not seen: an older leader's final
    entries stepped over by a fence, or an earlier append of ours whose response was lost.
    """
    if entry.seq > catalog.last_seq + 1:
        async with contextlib.aclosing(read_entries(store, catalog.zone, catalog.last_seq)) as it:
            async for missing in it:
                if missing.seq >= entry.seq:
                    break
                catalog.apply(missing)
    catalog.apply(entry)


async def refresh_catalog(store: ObjectStore, catalog: Catalog) -> int:
    """Apply the entries committed since ``catalog.last_seq``; returns how many were read.

    A catalog that only follows (a warm standby, a load from the raw log) writes no
    checkpoint, so it packs its new segments itself once they are many (:func:`compact`).
    """
    count = 0
    # Closed here, not by the garbage collector, when apply raises: its reads ahead are then
    # cancelled and awaited before this returns.
    async with contextlib.aclosing(read_entries(store, catalog.zone, catalog.last_seq)) as it:
        async for entry in it:
            catalog.apply(entry)
            count += 1
    if count and catalog.loose >= max(COMPACT_AFTER, catalog.segment_count // 8):
        await compact(catalog)
    return count


async def compact(catalog: Catalog) -> bool:
    """Pack the segment versions held as objects into columns, merging in worker threads;
    False (nothing lost, tried again later) when segments changed meanwhile."""
    snapshot = catalog.snapshot()
    merged: dict[str, SegmentColumns | None] = {}
    for table in snapshot.tables:
        if table.added or table.hidden:
            merged[table.table] = await asyncio.to_thread(table.merged)
    return catalog.install(snapshot, merged)
