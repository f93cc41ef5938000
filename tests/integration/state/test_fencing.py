"""A leader stalled mid-write wakes up after a take-over: its write is refused and invisible.

Runs on every storage backend (``store`` fixture): the fencing must hold on each one's
conditional writes, not just on the local directory.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import (
    Fenced,
    LeaseKeeper,
    LeaseSettings,
    LogWriter,
    NotLeader,
    load_catalog,
    sweep_orphans,
)
from tests.fakeclock import FakeClock, Timeline
from tests.unit.state.helpers import FaultyStore, segment

ZONE = "az1"
TABLE = "metrics_OFFLINE"


def agent(store: ObjectStore, timeline: Timeline, name: str) -> tuple[LeaseKeeper, FakeClock]:
    clock = FakeClock(timeline, auto_advance=True, monotonic_offset=hash(name) % 1000)
    return LeaseKeeper(store, ZONE, name, LeaseSettings(), clock=clock), clock


def guarded_writer(store: ObjectStore, keeper: LeaseKeeper, clock: FakeClock) -> LogWriter:
    epoch = keeper.epoch
    assert epoch is not None
    return LogWriter(
        store,
        ZONE,
        epoch,
        keeper.holder_id,
        clock=clock,
        guard=lambda: keeper.is_leader and keeper.epoch == epoch,
    )


async def test_stalled_leader_is_fenced_and_leaves_only_an_orphan(store: ObjectStore) -> None:
    timeline = Timeline()
    a_store = FaultyStore(store)
    a, a_clock = agent(a_store, timeline, "a")
    b, b_clock = agent(store, timeline, "b")
    assert await a.tick()
    a_writer = guarded_writer(a_store, a, a_clock)
    await a_writer.write_fence()
    kept = segment(ZONE, "committed")
    await a_store.put(kept.key, b"tarball")
    await a_writer.append(kept)
    assert not await b.tick()  # B starts watching A's lease

    frozen, wake = asyncio.Event(), asyncio.Event()

    async def sigstop(op: str, key: str) -> None:
        if op == "put" and "/log/" in key:
            frozen.set()
            await wake.wait()

    stale = segment(ZONE, "stale")
    await a_store.put(stale.key, b"tarball")  # data first, then the entry...
    a_store.before = sigstop
    append = asyncio.create_task(a_writer.append(stale))  # ...after the guard said yes
    await frozen.wait()

    timeline.advance(16)
    assert not a.is_leader
    assert await b.tick()
    assert b.epoch == 2
    await guarded_writer(store, b, b_clock).write_fence(reason="take-over")
    wake.set()
    with pytest.raises(Fenced):
        await append
    assert a_writer.is_fenced

    catalog = await load_catalog(store, ZONE)
    assert catalog.segment(TABLE, "stale") is None
    assert catalog.segment(TABLE, "committed") is not None
    assert not catalog.references(stale.key)
    assert (catalog.epoch, catalog.anomalies) == (2, 0)
    later = FakeClock(Timeline(start=datetime.now(UTC) + timedelta(hours=2)))
    removed = await sweep_orphans(store, ZONE, catalog, timedelta(hours=1), later)
    assert [info.key for info in removed] == [stale.key]


async def test_stalled_leader_that_checks_its_lease_writes_nothing(store: ObjectStore) -> None:
    timeline = Timeline()
    a, a_clock = agent(store, timeline, "a")
    assert await a.tick()
    writer = guarded_writer(store, a, a_clock)
    await writer.write_fence()
    timeline.advance(10)  # paused for the whole renew deadline
    with pytest.raises(NotLeader):
        await writer.append(segment(ZONE, "late"))
    assert (await load_catalog(store, ZONE)).segments() == []
