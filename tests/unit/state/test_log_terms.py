"""The term on the commit log: carried by every entry, and ``(term, epoch)`` fences writers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from az_agent.state import (
    Catalog,
    Fenced,
    FencePayload,
    LogEntry,
    LogWriter,
    SplitBrain,
    load_catalog,
    read_checkpoint,
    read_entries,
    write_checkpoint,
)
from az_agent.state.keys import log_key
from tests.fakeclock import FakeClock
from tests.unit.state.helpers import FaultyStore, file_store, segment

ZONE = "az1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    opened = await file_store(tmp_path / "bucket")
    yield opened
    await opened.close()


def writer(store: FaultyStore, term: int, epoch: int, name: str) -> LogWriter:
    return LogWriter(store, ZONE, epoch, name, clock=FakeClock(), term=term)


async def entries(store: FaultyStore) -> list[LogEntry]:
    return [entry async for entry in read_entries(store, ZONE, 0)]


def entry(seq: int, term: int, epoch: int, writer: str = "rogue") -> LogEntry:
    return LogEntry(
        seq=seq,
        epoch=epoch,
        term=term,
        writer=writer,
        nonce=f"n{seq}",
        time=FakeClock().now(),
        payload=segment(ZONE, f"s{seq}"),
    )


async def test_every_entry_carries_the_writer_term(store: FaultyStore) -> None:
    w = writer(store, 3, 1, "a")
    assert (w.term, w.epoch, w.order) == (3, 1, (3, 1))
    fence = await w.write_fence()
    appended = await w.append(segment(ZONE, "s"))
    assert (fence.term, appended.term) == (3, 3)
    stored = await entries(store)
    assert [(e.term, e.epoch) for e in stored] == [(3, 1), (3, 1)]
    raw = json.loads((await store.get(log_key(ZONE, 1)))[0])
    assert raw["term"] == 3


async def test_writers_without_a_term_write_term_zero(store: FaultyStore) -> None:
    w = LogWriter(store, ZONE, 1, "a", clock=FakeClock())
    assert w.term == 0
    await w.write_fence()
    assert [e.term for e in await entries(store)] == [0]


def test_entries_from_before_terms_read_as_term_zero() -> None:
    stored = json.loads(entry(1, 5, 2).encode())
    del stored["term"]
    old = LogEntry.decode(json.dumps(stored).encode(), "k")
    assert (old.term, old.epoch, old.order) == (0, 2, (0, 2))


def test_a_negative_term_is_refused(store: FaultyStore) -> None:
    with pytest.raises(ValueError, match="term must be >= 0"):
        writer(store, -1, 1, "a")


async def test_higher_term_fences_a_writer_of_a_higher_epoch(store: FaultyStore) -> None:
    """The activation's fence comes from another zone's agent: its epoch may well be lower."""
    old = writer(store, 1, 5, "old")
    await old.write_fence()
    await old.append(segment(ZONE, "s1"))
    new = writer(store, 2, 2, "new")
    fence = await new.write_fence(reason="activation")  # steps over (1, 5): lower order
    assert (fence.seq, fence.term, fence.epoch) == (3, 2, 2)
    assert isinstance(fence.payload, FencePayload)
    assert fence.payload.previous_epoch == 5
    with pytest.raises(Fenced) as fenced:
        await old.append(segment(ZONE, "s2"))
    assert old.is_fenced
    got = fenced.value
    assert (got.term, got.epoch, got.newer_term, got.newer_epoch, got.seq) == (1, 5, 2, 2, 3)
    assert "term 2" in str(got)
    puts = store.calls["put"]
    with pytest.raises(Fenced):
        await old.append(segment(ZONE, "s3"))  # for good, without touching the store
    assert store.calls["put"] == puts
    assert (await new.append(segment(ZONE, "s4"))).seq == 4
    assert [(e.term, e.epoch) for e in await entries(store)] == [(1, 5), (1, 5), (2, 2), (2, 2)]


async def test_stale_term_cannot_fence_over_a_higher_term(store: FaultyStore) -> None:
    """A replica that took its zone's lease (higher epoch) under a term read before the
    activation must not put its stale term after the activation's fence."""
    newer = writer(store, 2, 1, "activation")
    await newer.write_fence()
    stale = writer(store, 1, 9, "replica")
    with pytest.raises(Fenced) as fenced:
        await stale.write_fence()
    assert (fenced.value.newer_term, fenced.value.newer_epoch) == (2, 1)
    assert stale.is_fenced
    assert [(e.term, e.epoch) for e in await entries(store)] == [(2, 1)]


async def test_within_a_term_a_higher_epoch_still_fences(store: FaultyStore) -> None:
    old, new = writer(store, 2, 1, "old"), writer(store, 2, 2, "new")
    await old.write_fence()
    await new.write_fence()
    with pytest.raises(Fenced) as fenced:
        await old.append(segment(ZONE, "s"))
    assert (fenced.value.newer_term, fenced.value.newer_epoch) == (2, 2)


async def test_lower_term_after_our_fence_is_split_brain_even_with_a_higher_epoch(
    store: FaultyStore,
) -> None:
    mine = writer(store, 2, 3, "mine")
    await mine.write_fence()
    await store.put(log_key(ZONE, 2), entry(2, 1, 9).encode(), if_none_match=True)
    with pytest.raises(SplitBrain, match="term 1, epoch 9"):
        await mine.append(segment(ZONE, "s"))
    assert not mine.is_fenced


async def test_same_term_and_epoch_from_another_writer_is_split_brain(store: FaultyStore) -> None:
    await writer(store, 2, 1, "one").write_fence()
    with pytest.raises(SplitBrain):
        await writer(store, 2, 1, "two").write_fence()


async def test_higher_term_takes_over_from_a_busy_writer_of_a_higher_epoch(
    store: FaultyStore,
) -> None:
    """While fencing, the new writer jumps to the tail and judges only the newest entry there:
    this holds because (term, epoch) never decreases along the log."""
    old, new = writer(store, 1, 9, "old"), writer(store, 2, 1, "new")
    await old.write_fence()
    written = 0
    three_written = asyncio.Event()

    async def old_keeps_writing() -> None:
        nonlocal written
        try:
            for i in range(10_000):
                await old.append(segment(ZONE, f"old{i}"))
                written += 1
                if written == 3:
                    three_written.set()
        except Fenced:
            return
        raise AssertionError("the old writer was never fenced")

    async def new_takes_over() -> None:
        await three_written.wait()
        await new.write_fence(reason="activation")
        for i in range(3):
            await new.append(segment(ZONE, f"new{i}"))

    await asyncio.gather(old_keeps_writing(), new_takes_over())
    orders = [e.order for e in await entries(store)]
    assert orders == sorted(orders)
    assert orders.count((1, 9)) == written + 1  # its fence and every append that returned
    assert orders[-4:] == [(2, 1)] * 4


# -- the catalog and checkpoints follow the same order -----------------------------------------


def test_catalog_orders_entries_by_term_then_epoch() -> None:
    catalog = Catalog(ZONE)
    assert catalog.apply(entry(1, 1, 5))
    assert catalog.apply(entry(2, 2, 2))  # higher term, lower epoch: the activation's fence
    assert (catalog.term, catalog.epoch) == (2, 2)
    assert not catalog.apply(entry(3, 1, 9))  # lower term: fencing was violated
    assert not catalog.apply(entry(4, 2, 1))  # same term, lower epoch
    assert catalog.anomalies == 2
    assert catalog.apply(entry(5, 2, 2))
    names = sorted(s.name for s in catalog.segments())
    assert names == ["s1", "s2", "s5"]


async def test_checkpoint_keeps_the_term(store: FaultyStore) -> None:
    w = writer(store, 4, 2, "a")
    await w.write_fence()
    await w.append(segment(ZONE, "s"))
    catalog = await load_catalog(store, ZONE)
    assert catalog.term == 4
    await write_checkpoint(store, catalog)
    restored = await read_checkpoint(store, ZONE, catalog.last_seq)
    assert (restored.term, restored.epoch) == (4, 2)
