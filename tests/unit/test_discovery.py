"""Discovery's reconcile: a scan compared in one pass per table gives what one lookup per
name gives (deleted, purged, refreshed and added-since-checkpoint segments, odd CRCs)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from az_agent.agent.backup import discovery
from az_agent.agent.backup.discovery import Pending, reconcile
from az_agent.drivers.pinot.models import SegmentMetadata, TableRef
from az_agent.state import Catalog, SegmentPayload, write_checkpoint
from tests.fakeclock import FakeClock
from tests.unit.state.helpers import file_store
from tests.unit.state.test_columns import History


def ready(history: History, table: TableRef, rng: random.Random) -> list[SegmentMetadata]:
    """What a scan could list: every name the table ever had, with its last CRC backed up
    (live, deleted or purged) or another, and new names."""
    crcs = {
        entry.payload.segment: entry.payload.crc
        for entry in history.entries
        if isinstance(entry.payload, SegmentPayload) and entry.payload.table == table.name_with_type
    }
    crcs |= {f"new{n}": "1" for n in range(3)}
    found = []
    for name, last in sorted(crcs.items()):
        crc = last if rng.random() < 0.8 else str(rng.randrange(9))
        fields = {"segment.crc": crc, "segment.download.url": f"http://x/{name}"}
        found.append(SegmentMetadata.from_zk(table, name, fields))
    return found


Outcome = tuple[list[tuple[tuple[str, str], str]], list[tuple[str, str]]]


def outcome(catalog: Catalog, scans: list[tuple[TableRef, list[SegmentMetadata]]]) -> Outcome:
    pending: dict[tuple[str, str], Pending] = {}
    clock = FakeClock()
    unlisted = []
    for table, metas in scans:
        for item in reconcile(pending, table, metas, catalog, set(), clock):
            unlisted.append(item.key)
    return sorted((key, item.crc) for key, item in pending.items()), unlisted


@pytest.mark.parametrize("seed", range(4))
async def test_a_scan_compared_in_bulk_matches_lookups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    history = History()
    history.random(150, rng)
    catalog = history.catalog(100)
    store = await file_store(tmp_path / "bucket")
    try:
        await write_checkpoint(store, catalog)  # packed columns, then layers above them
    finally:
        await store.close()
    for entry in history.entries[100:]:
        catalog.apply(entry)
    assert catalog._columns
    assert catalog._added
    tables = [TableRef.parse(t) for t in catalog.tables()]
    scans = [(t, ready(history, t, rng)) for t in tables]
    monkeypatch.setattr(discovery, "BULK_RATIO", 0)  # one lookup per name
    by_name = outcome(catalog, scans)
    monkeypatch.setattr(discovery, "BULK_RATIO", 10**9)  # one pass per table
    assert outcome(catalog, scans) == by_name
    assert by_name[0]  # some tracked: the comparison saw both answers
    assert len(by_name[0]) < sum(len(metas) for _, metas in scans)
