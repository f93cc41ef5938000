"""The rehydration plan keeps names, not records, and gives back what the records would have:
checked against the plain computation over ``catalog.segments()`` on random histories (packed
by a checkpoint, with entries after it), and for what it holds in memory."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest

from az_agent.agent.restore.rehydrate import _upload_order, plan_rehydration
from az_agent.drivers.errors import NotFound
from az_agent.drivers.pinot.base import PinotController
from az_agent.drivers.pinot.models import TableRef
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import Catalog, SegmentDeletedPayload, SegmentRecord, load_catalog
from az_agent.state.checkpoint import write_checkpoint
from az_agent.state.keys import log_key
from tests.unit.state.test_columns import T0, ZONE, History


class ListingPinot:
    """The one call a plan makes: a table's segments' CRCs."""

    def __init__(self, crcs: dict[str, dict[str, str]]) -> None:
        self.crcs = crcs
        self.calls: list[str] = []

    async def segment_crcs(self, table: TableRef) -> dict[str, str]:
        self.calls.append(table.name_with_type)
        if table.name_with_type not in self.crcs:
            raise NotFound(f"table {table.name_with_type}")
        return dict(self.crcs[table.name_with_type])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileObjectStore]:
    opened = FileObjectStore(tmp_path / "bucket")
    yield opened
    await opened.close()


async def packed(store: FileObjectStore, history: History, checkpoint_at: int) -> Catalog:
    """The history's catalog as an agent holds it: loaded from a checkpoint (packed
    columns), then the entries after it applied."""
    catalog = Catalog(ZONE)
    for entry in history.entries[:checkpoint_at]:
        catalog.apply(entry)
    for entry in history.entries[checkpoint_at - 1 :]:  # a load reads from the checkpoint's
        await store.put(log_key(ZONE, entry.seq), entry.encode())
    await write_checkpoint(store, catalog)
    return await load_catalog(store, ZONE)


def local_copies(catalog: Catalog, rng: random.Random) -> dict[str, dict[str, str]]:
    """A Pinot holding some segments with the backup's CRC, some with another, and one table
    not at all."""
    crcs: dict[str, dict[str, str]] = {}
    for record in catalog.segments():
        if record.table.startswith("logs") or not record.crc.isdigit():
            continue  # a table Pinot lacks; CRCs Pinot could not hold
        if str(int(record.crc)) != record.crc:
            continue  # "006": Pinot's would read "6", another CRC
        roll = rng.random()
        if roll < 0.5:
            crcs.setdefault(record.table, {})[record.name] = record.crc
        elif roll < 0.7:
            crcs.setdefault(record.table, {})[record.name] = str(int(record.crc) + 1)
    return crcs


@pytest.mark.parametrize("seed", [random.randrange(1 << 32) for _ in range(4)])
async def test_the_plan_moves_what_the_records_say_in_upload_order(
    store: FileObjectStore, seed: int
) -> None:
    rng = random.Random(seed)
    history = History()
    history.random(300, rng)
    catalog = await packed(store, history, checkpoint_at=rng.randrange(100, 300))
    local = local_copies(catalog, rng)
    for as_of in (None, T0 + timedelta(minutes=rng.randrange(300))):
        pinot = ListingPinot(local)
        plan = await plan_rehydration(cast(PinotController, pinot), catalog, as_of)
        live = catalog.segments(as_of)
        expected = sorted(
            (r for r in live if local.get(r.table, {}).get(r.name) != r.crc), key=_upload_order
        )
        assert list(plan.records()) == expected, seed
        assert plan.segments_total == len(expected), seed
        assert plan.present == len(live) - len(expected), seed
        assert plan.bytes_total == sum(r.size for r in expected), seed
        assert {n: t.segments for n, t in plan.tables.items()} == {
            t: sum(1 for r in expected if r.table == t) for t in {r.table for r in expected}
        }, seed
        assert sorted(pinot.calls) == sorted({r.table for r in live}), seed  # once a table
        batches = list(plan.batches(7))
        assert [r for batch in batches for r in batch] == expected, seed
        assert all(len(batch) == 7 for batch in batches[:-1]), seed
        unplanned = await plan_rehydration(None, catalog, as_of)
        assert list(unplanned.records()) == sorted(live, key=_upload_order), seed


async def test_a_segment_deleted_after_the_plan_is_left_out(store: FileObjectStore) -> None:
    history = History()
    history.random(60, random.Random(7))
    catalog = await packed(store, history, checkpoint_at=40)
    plan = await plan_rehydration(None, catalog)
    first = next(plan.records())
    deletion = history.add(SegmentDeletedPayload(table=first.table, segment=first.name))
    catalog.apply(deletion)
    assert [r.name for r in plan.records()] == [
        r.name for r in sorted(catalog.segments(), key=_upload_order)
    ]
    assert plan.segments_total == len(catalog.segments()) + 1


async def test_records_given_as_a_list_plan_alike_and_refuse_a_time() -> None:
    history = History()
    history.random(80, random.Random(3))
    catalog = Catalog(ZONE)
    for entry in history.entries:
        catalog.apply(entry)
    records: list[SegmentRecord] = catalog.segments()
    plan = await plan_rehydration(None, list(reversed(records)))
    assert list(plan.records()) == sorted(records, key=_upload_order)
    with pytest.raises(ValueError, match="as_of"):
        await plan_rehydration(None, records, T0)


async def test_a_plan_holds_far_less_than_the_records_it_stands_for(
    store: FileObjectStore,
) -> None:
    """A cold activation moves every segment: the plan of 20,000 holds their names, under a
    third of the records' memory (at a million, about 100 MB where the records took 500)."""
    history = History()
    for n in range(20_000):
        history.add(
            {
                "kind": "segment", "table": "events_REALTIME", "tableType": "REALTIME",
                "segment": f"events__{n % 8}__{n // 8}__20300101T0000Z", "crc": str(10**9 + n),
                "size": 50_000_000 + n, "sha256": f"{n:064x}",
                "key": f"{ZONE}/segments/events_REALTIME/events__{n}/{10**9 + n}.tar.gz",
                "partition": n % 8, "startOffset": str(n), "endOffset": str(n + 1),
                "backedUpAt": T0.isoformat(),
            }
        )  # fmt: skip
    catalog = await packed(store, history, checkpoint_at=20_000)

    tracemalloc.start()
    try:
        records = catalog.segments()
        held_by_records = tracemalloc.get_traced_memory()[0]
        del records
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        plan = await plan_rehydration(None, catalog)
        held_by_plan = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert plan.segments_total == 20_000
    assert held_by_plan < held_by_records / 3, (held_by_plan, held_by_records)
