"""The pending set of segment backup: which segment versions still wait to be copied.

Kept apart from the copying so that what a poll of the controller does to the set reads in one
place: a backup-ready version the catalog lacks is tracked, a refresh (same name, new CRC)
replaces the version still waiting, one the catalog holds is dropped, and one no longer listed
is handed back to be reported as vanished. Versions being copied (claimed) are left alone.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Sequence
from dataclasses import dataclass
from enum import Enum

from az_agent.agent.backup.segment_stats import Key, completed_at_ms, now_ms
from az_agent.drivers.pinot.models import SegmentMetadata, TableRef
from az_agent.state import Catalog, Clock


@dataclass(eq=False)
class Pending:
    """A backup-ready segment version not yet in the catalog."""

    table: TableRef
    meta: SegmentMetadata
    completed_ms: int
    attempts: int = 0
    next_try: float = 0.0
    error: BaseException | None = None

    @property
    def key(self) -> Key:
        return (self.table.name_with_type, self.meta.name)

    @property
    def crc(self) -> str:
        return str(self.meta.crc)

    def describe(self) -> str:
        return f"{self.table}/{self.meta.name} (CRC {self.crc})"


class Outcome(Enum):
    COMMITTED = "committed"
    PRESENT = "present"
    """The catalog already held this version (copied by someone else meanwhile)."""
    GONE = "gone"
    """Vanished from Pinot, or replaced by a refresh: this version will not be copied."""
    FAILED = "failed"


def track(
    pending: dict[Key, Pending], table: TableRef, meta: SegmentMetadata, clock: Clock
) -> None:
    """Wait for this version of the segment, in place of any other version waiting."""
    seen = now_ms(clock)
    item = Pending(table, meta, completed_at_ms(meta, seen))
    pending[item.key] = item


def forget(pending: dict[Key, Pending], item: Pending) -> None:
    """Stop waiting for ``item``, unless another version has taken its place."""
    if pending.get(item.key) is item:
        del pending[item.key]


def wanted_tables(tables: list[TableRef], wanted: Collection[str]) -> list[TableRef]:
    """The tables to back up: those named (raw or with type), or every one when none is."""
    names = set(wanted)
    if not names:
        return tables
    return [t for t in tables if t.raw in names or t.name_with_type in names]


def reconcile(
    pending: dict[Key, Pending],
    table: TableRef,
    ready: Sequence[SegmentMetadata],
    catalog: Catalog,
    claimed: Container[Key],
    clock: Clock,
) -> list[Pending]:
    """Bring ``table``'s part of ``pending`` in line with its ``ready`` segments.

    Returns the waiting versions the controller no longer lists, for the caller to report as
    vanished; they are still in ``pending``.
    """
    listed: set[Key] = set()
    for meta in ready:
        key = (table.name_with_type, meta.name)
        listed.add(key)
        record = catalog.segment(*key)
        current = pending.get(key)
        if record is not None and record.crc == str(meta.crc):
            if current is not None and key not in claimed:
                del pending[key]
        elif current is None or current.meta.crc != meta.crc:
            track(pending, table, meta, clock)
    return [
        item
        for key, item in pending.items()
        if key[0] == table.name_with_type and key not in listed and key not in claimed
    ]


__all__ = ["Outcome", "Pending", "forget", "reconcile", "track", "wanted_tables"]
