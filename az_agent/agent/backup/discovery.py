"""The pending set of segment backup: which segment versions still wait to be copied.

Kept apart from the copying so that what a poll of the controller does to the set reads in one
place: a backup-ready version the catalog lacks is tracked, a refresh (same name, new CRC)
replaces the version still waiting, one the catalog holds is dropped, and one no longer listed
is handed back to be reported as vanished. Versions being copied (claimed) are left alone.

A poll reads one of two ways (``SegmentBackupLoop._poll``). A *scan* reads the metadata of every
segment (``/segments/{t}/zkmetadata``, about 600 bytes a segment): it is the only way to see a
refresh, a new CRC under a known name, so it runs at a leader's first poll, in a pause's flush
and every ``refreshScanIntervalSeconds``. The polls between *list* the names (``/segments/{t}``,
about 40 bytes a segment) and read the metadata of :func:`new_names` only, one request each, so
with 100,000 segments backed up and 10 new a poll moves 4 MB instead of 60 and the agent's CPU
stays in tens of milliseconds. Names become new again when Pinot revives a deleted one; the
next scan catches that too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Container, Iterable, Sequence, Sized
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum

from az_agent.agent.backup.segment_stats import Key, completed_at_ms, now_ms
from az_agent.drivers.errors import NotFound
from az_agent.drivers.pinot.base import PinotController
from az_agent.drivers.pinot.models import SegmentMetadata, TableRef
from az_agent.state import Catalog, Clock

READ_CONCURRENCY = 8
"""Metadata requests of one poll in flight at once."""
SCAN_FRACTION = 8
"""A listing with more than 1/8 of its names new (and more than :data:`SCAN_MIN`) is read with
one scan of the table instead: one large answer beats that many small requests."""
SCAN_MIN = 64
BULK_RATIO = 64
"""Reconcile compares a table in one pass once its ready segments are 1/64 of those held."""


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


def new_names(
    table: TableRef, listed: set[str], held: AbstractSet[str], pending: Iterable[Key]
) -> set[str]:
    """The names of ``listed`` that neither the catalog (``held``: the names it has a version
    of) nor ``pending`` holds."""
    fresh = listed - held
    if fresh:
        fresh.difference_update(name for typed, name in pending if typed == table.name_with_type)
    return fresh


def worth_a_scan(fresh: Collection[str], listed: Collection[str]) -> bool:
    """Whether reading ``fresh`` one by one would cost more than one scan of the table."""
    return len(fresh) > max(SCAN_MIN, len(listed) // SCAN_FRACTION)


async def read_metadata(
    pinot: PinotController, table: TableRef, names: Iterable[str]
) -> list[SegmentMetadata]:
    """The metadata of each of ``names`` (:data:`READ_CONCURRENCY` requests at a time); a
    segment deleted since it was listed is left out."""
    limit = asyncio.Semaphore(READ_CONCURRENCY)

    async def read(name: str) -> SegmentMetadata | None:
        async with limit:
            try:
                return await pinot.segment(table, name)
            except NotFound:
                return None

    found = await asyncio.gather(*(read(name) for name in sorted(names)))
    return [meta for meta in found if meta is not None]


def held_crcs(catalog: Catalog, table: str, ready: Sized) -> Callable[[str], str | None]:
    """The catalog's live CRC of a name of ``table`` (None when it has none): one lookup
    per name for a handful of names (a poll between scans), one pass over the table's packed
    columns for many (a scan: a lookup costs tens of microseconds, a million of them a minute)."""
    if len(ready) * BULK_RATIO < len(catalog.segment_names(table)):
        return lambda name: None if (r := catalog.segment(table, name)) is None else r.crc
    return catalog.segment_crcs(table).get


def reconcile(
    pending: dict[Key, Pending],
    table: TableRef,
    ready: Sequence[SegmentMetadata],
    catalog: Catalog,
    claimed: Container[Key],
    clock: Clock,
    present: Collection[str] | None = None,
) -> list[Pending]:
    """Bring ``table``'s part of ``pending`` in line with its ``ready`` segments.

    ``present`` names every segment the controller listed, when ``ready`` holds only the new
    ones (a poll between scans); by default the ready ones are all there is. Returns the
    waiting versions the controller no longer lists, for the caller to report as vanished;
    they are still in ``pending``.
    """
    listed: set[Key] = set()
    typed = table.name_with_type  # a property: once, not per segment of a scan
    held = held_crcs(catalog, typed, ready)
    for meta in ready:
        key = (typed, meta.name)
        listed.add(key)
        current = pending.get(key)
        if held(meta.name) == str(meta.crc):
            if current is not None and key not in claimed:
                del pending[key]
        elif current is None or current.meta.crc != meta.crc:
            track(pending, table, meta, clock)
    return [
        item
        for key, item in pending.items()
        if key[0] == typed
        and key not in listed
        and key not in claimed
        and (present is None or key[1] not in present)
    ]


__all__ = [
    "Outcome",
    "Pending",
    "forget",
    "held_crcs",
    "new_names",
    "read_metadata",
    "reconcile",
    "track",
    "wanted_tables",
    "worth_a_scan",
]
