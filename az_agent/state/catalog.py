"""The catalog: what a zone's backup holds, rebuilt from its checkpoint and commit log.

It answers what the rest of the agent asks: every segment backed up (the latest CRC of each
(table, segment), earlier CRCs kept for "as of" questions; a segment Pinot deleted stops being
live at its ``segment-deleted`` entry and is forgotten at its ``segments-purged`` one), every
database dump, table configs
and schemas, the last handover, the term, epoch and sequence number reached. "As of T" means the
state of the backup at T: records whose log entry was committed at or before T.

Entries must be applied in sequence order without gaps; entries already applied are ignored,
so a writer can apply its own appends and later catch up from the bucket without double work.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, KeysView
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from az_agent.drivers.storage.base import ObjectStore
from az_agent.state.backups import (
    ConfigRecord,
    DumpRecord,
    Row,
    SegmentDeletion,
    SegmentRecord,
)
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


def _cutoff(as_of: datetime | None) -> float:
    return float("inf") if as_of is None else as_of.timestamp()


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """An immutable view for a checkpoint writer, taken in O(records) pointer copies."""

    zone: str
    seq: int
    epoch: int
    records: list[Record]
    events: list[LogEntry]
    term: int = 0


class Catalog:
    """In-memory catalog of one zone; see the module docstring for its rules."""

    def __init__(self, zone: str) -> None:
        self.zone = sys.intern(check_zone(zone))
        self.last_seq = 0
        self.epoch = 0
        self.term = 0
        """Term and epoch of the last entry applied (0 for logs from before terms)."""
        self.anomalies = 0
        """Entries skipped because their (term, epoch) went backwards (must stay 0)."""
        self.last_paused: LogEntry | None = None
        self.last_fence: LogEntry | None = None
        self.last_resumed: LogEntry | None = None
        self._segments: dict[str, dict[str, SegmentRecord]] = {}
        self._superseded: dict[tuple[str, str], list[SegmentRecord]] = {}
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
            if self._segments.get(payload.table, {}).get(payload.segment) is not None:
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
        names = self._segments.get(table, {})
        names.pop(name, None)
        if not names:
            self._segments.pop(table, None)
        self._superseded.pop((table, name), None)
        self._other_keys = None

    def _add_segment(self, record: SegmentRecord) -> None:
        names = self._segments.setdefault(record.table, {})
        current = names.get(record.name)
        revived = self._deleted.pop((record.table, record.name), None) is not None
        if current is not None and current.crc == record.crc and not revived:
            return  # the same bytes again: it has been part of the backup since the first
        if current is not None:
            self._superseded.setdefault((record.table, record.name), []).append(current)
        names[record.name] = record
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
        elif tag == "d":
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

    def _restore_segment(self, record: SegmentRecord) -> None:
        """Rows list a segment's versions oldest first, the current one last, as they were
        (a version revived after a deletion may repeat the CRC of the one before it)."""
        names = self._segments.setdefault(record.table, {})
        current = names.get(record.name)
        if current is not None:
            self._superseded.setdefault((record.table, record.name), []).append(current)
        names[record.name] = record
        if record.key_override is not None:
            self._other_keys = None

    def _restore_event(self, entry: LogEntry) -> None:
        if isinstance(entry.payload, PausedPayload):
            self.last_paused = entry
        elif isinstance(entry.payload, FencePayload):
            self.last_fence = entry
        elif isinstance(entry.payload, ResumedPayload):
            self.last_resumed = entry

    def snapshot(self) -> CatalogSnapshot:
        """Everything needed to rebuild this catalog, in an order :meth:`apply_row` accepts."""
        records: list[Record] = []
        for table in sorted(self._segments):
            names = self._segments[table]
            for name in sorted(names):
                records.extend(self._superseded.get((table, name), ()))
                records.append(names[name])
                if (deletion := self._deleted.get((table, name))) is not None:
                    records.append(deletion)
        for database in sorted(self._dumps):
            records.extend(sorted(self._dumps[database].values(), key=lambda d: d.seq))
        for configs in (self._configs, self._schemas):
            for name in sorted(configs):
                records.extend(configs[name])
        events = [e for e in (self.last_fence, self.last_paused, self.last_resumed) if e]
        return CatalogSnapshot(
            self.zone, self.last_seq, self.epoch, records, events, term=self.term
        )

    def rows(self) -> Iterator[Row]:
        """The catalog as checkpoint rows; equal catalogs give equal rows."""
        snapshot = self.snapshot()
        for record in snapshot.records:
            yield record.to_row()
        for event in snapshot.events:
            yield ["e", event.to_json()]

    # -- queries --------------------------------------------------------------------------

    @property
    def segment_count(self) -> int:
        """Live segments: backed up and not deleted from Pinot."""
        return sum(len(names) for names in self._segments.values()) - len(self._deleted)

    def tables(self) -> list[str]:
        """Tables with at least one segment in the catalog (live or deleted, not purged)."""
        return sorted(self._segments)

    def segment_names(self, table: str) -> KeysView[str]:
        """Names of ``table``'s segments the catalog holds a version of, live or deleted from
        Pinot (not purged): a live view, so that a poll can set it against a listing of
        100,000 names without a record lookup per name."""
        return self._segments.get(table, {}).keys()

    def segment(self, table: str, name: str, as_of: datetime | None = None) -> SegmentRecord | None:
        """The version of one segment live in the backup as of ``as_of`` (default: now)."""
        current = self._segments.get(table, {}).get(name)
        return None if current is None else self._version_at(current, _cutoff(as_of))

    def deletions(self) -> list[SegmentDeletion]:
        """Segments deleted from Pinot whose objects are still kept, oldest deletion first."""
        return sorted(self._deleted.values(), key=lambda d: d.seq)

    def versions(self, table: str, name: str) -> list[SegmentRecord]:
        """Every version of one segment the catalog holds, deleted or not, oldest first."""
        current = self._segments.get(table, {}).get(name)
        if current is None:
            return []
        return [*self._superseded.get((table, name), []), current]

    def _version_at(self, current: SegmentRecord, cutoff: float) -> SegmentRecord | None:
        deletion = self._deleted.get((current.table, current.name))
        if deletion is not None and deletion.committed_ts <= cutoff:
            return None  # deleted from Pinot at or before the cutoff
        if current.committed_ts <= cutoff:
            return current
        older = self._superseded.get((current.table, current.name), [])
        for record in reversed(older):
            if record.committed_ts <= cutoff:
                return record
        return None

    def segments(
        self, as_of: datetime | None = None, *, table: str | None = None
    ) -> list[SegmentRecord]:
        """Every segment (its newest CRC as of ``as_of``), optionally of one table."""
        cutoff = _cutoff(as_of)
        tables = [table] if table is not None else sorted(self._segments)
        found: list[SegmentRecord] = []
        for name in tables:
            for current in self._segments.get(name, {}).values():
                record = self._version_at(current, cutoff)
                if record is not None:
                    found.append(record)
        return found

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
            for table, names in self._segments.items()
            for record in names.values()
            if record.key_override is not None
        }
        keys.update(
            r.key_override for rs in self._superseded.values() for r in rs if r.key_override
        )
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
        current = self._segments.get(table, {}).get(name)
        if current is None:
            return False
        versions = [current, *self._superseded.get((table, name), [])]
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
    """Apply the entries committed since ``catalog.last_seq``; returns how many were read."""
    count = 0
    async for entry in read_entries(store, catalog.zone, catalog.last_seq):
        catalog.apply(entry)
        count += 1
    return count
