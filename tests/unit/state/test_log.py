"""The commit log: consecutive create-only entries, fencing, lost responses, the tail search."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from az_agent.drivers.errors import PreconditionFailed, Unavailable
from az_agent.state import (
    Fenced,
    LogEntry,
    LogWriter,
    NotLeader,
    SplitBrain,
    find_tail,
    last_entry,
    read_entries,
)
from az_agent.state.entries import FencePayload
from az_agent.state.keys import checkpoint_key, log_key
from az_agent.state.log import newest_entry
from tests.fakeclock import FakeClock
from tests.unit.state.helpers import FaultyStore, Overlap, file_store, segment

ZONE = "az1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    opened = await file_store(tmp_path / "bucket")
    yield opened
    await opened.close()


def writer(store: FaultyStore, epoch: int, name: str) -> LogWriter:
    return LogWriter(store, ZONE, epoch, name, clock=FakeClock())


async def entries(store: FaultyStore) -> list[LogEntry]:
    return [entry async for entry in read_entries(store, ZONE, 0)]


async def test_fence_then_appends_at_consecutive_numbers(store: FaultyStore) -> None:
    w = writer(store, 1, "a")
    fence = await w.write_fence(reason="first start")
    assert (fence.seq, fence.epoch) == (1, 1)
    assert isinstance(fence.payload, FencePayload)
    assert fence.payload.previous_epoch == 0
    appended = [await w.append(segment(ZONE, f"s{i}")) for i in range(3)]
    assert [e.seq for e in appended] == [2, 3, 4]
    assert [e.seq for e in await entries(store)] == [1, 2, 3, 4]
    assert await w.write_fence() == fence  # once per writer


async def test_append_before_fence_is_a_programming_error(store: FaultyStore) -> None:
    with pytest.raises(RuntimeError):
        await writer(store, 1, "a").append(segment(ZONE, "s"))


async def test_newer_epoch_fences_the_old_writer_for_good(
    store: FaultyStore, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = writer(store, 1, "old"), writer(store, 2, "new")
    await old.write_fence()
    await old.append(segment(ZONE, "s1"))
    fence = await new.write_fence()
    assert fence.seq == 3
    assert isinstance(fence.payload, FencePayload)
    assert fence.payload.previous_epoch == 1
    with caplog.at_level(logging.ERROR), pytest.raises(Fenced) as fenced:
        await old.append(segment(ZONE, "s2"))
    assert (fenced.value.newer_epoch, fenced.value.seq) == (2, 3)
    assert "fenced" in caplog.text
    assert "stops for good" in caplog.text
    puts = store.calls["put"]
    with pytest.raises(Fenced):
        await old.append(segment(ZONE, "s3"))
    assert store.calls["put"] == puts
    assert old.is_fenced
    assert [e.epoch for e in await entries(store)] == [1, 1, 2]


async def test_fence_steps_over_an_old_leader_still_finishing(store: FaultyStore) -> None:
    old, new = writer(store, 1, "old"), writer(store, 2, "new")
    await old.write_fence()

    async def old_leader_sneaks_in(op: str, key: str) -> None:
        if op == "put" and key == log_key(ZONE, 2) and store.before is old_leader_sneaks_in:
            store.before = _nothing
            await old.append(segment(ZONE, "late"))

    store.before = old_leader_sneaks_in
    fence = await new.write_fence()
    assert fence.seq == 3
    assert isinstance(fence.payload, FencePayload)
    assert fence.payload.previous_epoch == 1
    with pytest.raises(Fenced):
        await old.append(segment(ZONE, "later"))
    assert [(e.seq, e.epoch) for e in await entries(store)] == [(1, 1), (2, 1), (3, 2)]


async def _nothing(op: str, key: str) -> None:
    del op, key


async def test_same_epoch_from_another_writer_is_split_brain(
    store: FaultyStore, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = writer(store, 1, "one"), writer(store, 1, "two")
    await one.write_fence()
    with caplog.at_level(logging.CRITICAL), pytest.raises(SplitBrain):
        await two.write_fence()  # a duplicated holder id or epoch: caught on the tail
    assert "SPLIT BRAIN" in caplog.text
    rogue = LogEntry(
        seq=2,
        epoch=1,
        writer="rogue",
        nonce="n",
        time=FakeClock().now(),
        payload=segment(ZONE, "x"),
    )
    await store.put(log_key(ZONE, 2), rogue.encode(), if_none_match=True)
    with pytest.raises(SplitBrain):
        await one.append(segment(ZONE, "s"))  # the clash at 2 tells the same story
    assert [e.writer for e in await entries(store)] == ["one", "rogue"]  # nothing overwritten


async def test_fence_refused_when_a_newer_epoch_already_wrote(store: FaultyStore) -> None:
    """A leader that stalled before its fence must not put its epoch after a newer one."""
    stale, newer = writer(store, 2, "stale"), writer(store, 3, "newer")
    await newer.write_fence()
    await newer.append(segment(ZONE, "s"))
    with pytest.raises(Fenced):
        await stale.write_fence()
    assert [e.epoch for e in await entries(store)] == [3, 3]


async def test_older_epoch_after_our_fence_is_split_brain(store: FaultyStore) -> None:
    new = writer(store, 2, "new")
    await new.write_fence()
    rogue = LogEntry(
        seq=2,
        epoch=1,
        writer="rogue",
        nonce="n",
        time=FakeClock().now(),
        payload=segment(ZONE, "x"),
    )
    await store.put(log_key(ZONE, 2), rogue.encode(), if_none_match=True)
    with pytest.raises(SplitBrain):
        await new.append(segment(ZONE, "s"))


async def test_lost_response_then_precondition_is_our_own_entry(store: FaultyStore) -> None:
    """A driver retry after a lost response reports PreconditionFailed for our own write."""
    w = writer(store, 1, "a")
    await w.write_fence()

    async def retried(op: str, key: str) -> None:
        if op == "put" and key.startswith(f"{ZONE}/log/"):
            raise PreconditionFailed("the first attempt landed, its response was lost")

    store.after = retried
    entry = await w.append(segment(ZONE, "s"))
    store.after = _nothing
    assert entry.seq == 2
    assert (await w.append(segment(ZONE, "t"))).seq == 3


async def test_unknown_outcome_is_settled_by_the_next_append(store: FaultyStore) -> None:
    w = writer(store, 1, "a")
    await w.write_fence()
    store.lose_put_responses = 1
    with pytest.raises(Unavailable):
        await w.append(segment(ZONE, "s1"))
    second = await w.append(segment(ZONE, "s2"))
    assert second.seq == 3
    names = [e.payload.segment for e in await entries(store) if e.payload.kind == "segment"]
    assert names == ["s1", "s2"]


async def test_failed_append_is_retried_at_the_same_number(store: FaultyStore) -> None:
    w = writer(store, 1, "a")
    await w.write_fence()
    store.down = True
    with pytest.raises(Unavailable):
        await w.append(segment(ZONE, "s1"))
    store.down = False
    assert (await w.append(segment(ZONE, "s1"))).seq == 2


async def test_guard_stops_a_writer_that_lost_its_lease(store: FaultyStore) -> None:
    leader = True
    w = LogWriter(store, ZONE, 1, "a", clock=FakeClock(), guard=lambda: leader)
    await w.write_fence()
    leader = False
    with pytest.raises(NotLeader):
        await w.append(segment(ZONE, "s"))
    leader = True
    assert (await w.append(segment(ZONE, "s"))).seq == 2


@pytest.mark.parametrize("count", [0, 1, 2, 3, 37, 64, 100])
async def test_tail_is_found_with_logarithmic_probes(store: FaultyStore, count: int) -> None:
    w = writer(store, 1, "a")
    if count:
        await w.write_fence()
    for i in range(count - 1):
        await w.append(segment(ZONE, f"s{i}"))
    store.calls.clear()
    assert await find_tail(store, ZONE) == count
    assert store.calls["head"] <= 2 * math.log2(count + 1) + 2
    last = await last_entry(store, ZONE)
    assert (last.seq if last else 0) == count


async def test_tail_search_starts_at_the_newest_checkpoint(store: FaultyStore) -> None:
    w = writer(store, 1, "a")
    await w.write_fence()
    for i in range(99):
        await w.append(segment(ZONE, f"s{i}"))
    await store.put(checkpoint_key(ZONE, 96), b"named like a checkpoint")
    await store.put(checkpoint_key(ZONE, 5000), b"stray, beyond the log")
    store.calls.clear()
    assert await find_tail(store, ZONE) == 100
    assert store.calls["head"] <= 8  # 5000 (absent), 96, then 97, 98, 100, 104 and bisection


async def test_read_entries_stops_at_the_first_free_number(store: FaultyStore) -> None:
    w = writer(store, 1, "a")
    await w.write_fence()
    for i in range(70):
        await w.append(segment(ZONE, f"s{i}"))
    seqs = [e.seq async for e in read_entries(store, ZONE, 5, window=8)]
    assert seqs == list(range(6, 72))


async def test_concurrent_writers_of_different_epochs_keep_the_order(store: FaultyStore) -> None:
    old, new = writer(store, 1, "old"), writer(store, 2, "new")
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
        await new.write_fence()
        for i in range(5):
            await new.append(segment(ZONE, f"new{i}"))

    await asyncio.gather(old_keeps_writing(), new_takes_over())
    epochs = [e.epoch for e in await entries(store)]
    assert epochs == sorted(epochs)
    assert epochs[-1] == 2
    assert epochs.count(1) == written + 1  # its fence and every append that returned


def test_zone_keys_are_one_safe_path_element() -> None:
    assert log_key("az1", 7) == "az1/log/00000000000000000007.json"
    assert checkpoint_key("az1", 7) == "az1/checkpoints/00000000000000000007.jsonl.gz"
    for bad in ["a/b", "", "..", "sp ace"]:
        with pytest.raises(ValueError, match=r"zone|key"):
            log_key(bad, 1)
    with pytest.raises(ValueError, match="start at 1"):
        log_key("az1", 0)


async def test_a_fence_looks_for_the_tail_from_an_entry_the_caller_read(
    store: FaultyStore,
) -> None:
    """An activation passes the last entry its catalog read: the tail is found from there with
    a few HEADs; a hint retention removed meanwhile is checked and ignored."""
    first = writer(store, 1, "a")
    await first.write_fence()
    for number in range(40):
        await first.append(segment(ZONE, f"seg{number}"))
    store.calls.clear()
    hinted = LogWriter(store, ZONE, 2, "b", clock=FakeClock(), tail_hint=38)
    fence = await hinted.write_fence()
    assert fence.seq == 42
    assert store.calls["head"] <= 6  # 38 checked, then 39, 41, 45, 43, 42
    store.calls.clear()
    gone = LogWriter(store, ZONE, 3, "c", clock=FakeClock(), tail_hint=99)  # not there
    assert (await gone.write_fence()).seq == 43
    assert store.calls["head"] >= 10  # searched from the checkpoint (none: from the start)


async def test_a_hint_at_the_tail_is_read_and_probed_past_in_one_round_trip(
    store: FaultyStore,
) -> None:
    """An activation's take-over and fence start from the entry its catalog read last: that
    entry is read and the next name probed together, nothing else when it is the tail."""
    w = writer(store, 1, "a")
    await w.write_fence()
    for number in range(5):
        await w.append(segment(ZONE, f"seg{number}"))
    store.calls.clear()
    store.before = overlap = Overlap()
    tail, newest = await newest_entry(store, ZONE, hint=6)
    assert (tail, newest.seq if newest else None) == (6, 6)
    assert (store.calls["get"], store.calls["head"], overlap.peak) == (1, 1, 2)
    store.calls.clear()
    assert (await newest_entry(store, ZONE, hint=3))[0] == 6  # past the hint: searched on
    assert (await newest_entry(store, ZONE, hint=40))[0] == 6  # not there: from the start


async def test_a_short_log_is_read_with_few_reads_past_its_tail(store: FaultyStore) -> None:
    """The read-ahead doubles per round trip, not per entry: an activation reading a log of 4
    entries waits for about 5 reads past its tail, not 16."""
    w = writer(store, 1, "a")
    await w.write_fence()
    for number in range(3):
        await w.append(segment(ZONE, f"seg{number}"))
    store.keys.clear()
    assert [e.seq for e in await entries(store)] == [1, 2, 3, 4]
    past = [key for op, key in store.keys if op == "get" and key > log_key(ZONE, 4)]
    assert 1 <= len(past) <= 5, past
