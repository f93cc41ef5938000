"""The primary record on every storage backend: concurrent activations commit exactly one, and
the term they commit fences the losing zone's writer.

Runs on every backend (``store`` fixture): the guarantee rests on each one's create-only and
compare-and-swap writes, so it is checked on each, with claims really in flight together.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import (
    Fenced,
    LeaseKeeper,
    LeaseSettings,
    LogWriter,
    PrimaryLock,
    PrimaryObservation,
    PrimaryRecord,
    PrimaryTaken,
    load_catalog,
)
from tests.fakeclock import FakeClock, Timeline
from tests.unit.state.helpers import FaultyStore, segment

ZONES = ("az1", "az2", "az3")
CLAIMS_PER_ROUND = 6
ROUNDS = 4


async def race(
    store: ObjectStore, source: str, targets: list[str], expected: PrimaryObservation | None
) -> tuple[list[PrimaryRecord], list[PrimaryTaken]]:
    """``CLAIMS_PER_ROUND`` claims from ``source`` alternating over ``targets``, all in flight
    at once, each from its own lock (as from different agents)."""
    gate = asyncio.Event()
    counter = itertools.count()

    async def one(target: str) -> PrimaryRecord:
        lock = PrimaryLock(store, clock=FakeClock())
        operation = f"op-{target}-{next(counter)}"
        await gate.wait()
        return await lock.claim(
            source=source, zone=target, operation_id=operation, expected=expected
        )

    tasks = [asyncio.create_task(one(targets[i % len(targets)])) for i in range(CLAIMS_PER_ROUND)]
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    won = [o for o in outcomes if isinstance(o, PrimaryRecord)]
    lost = [o for o in outcomes if isinstance(o, PrimaryTaken)]
    unexpected = [o for o in outcomes if not isinstance(o, PrimaryRecord | PrimaryTaken)]
    assert not unexpected, unexpected
    return won, lost


@pytest.mark.parametrize("shared_expectation", [True, False], ids=["one-read", "own-reads"])
async def test_concurrent_claims_commit_exactly_one(
    store: ObjectStore, shared_expectation: bool
) -> None:
    """Every round: claims of the current {source, term} towards the two other zones race;
    one wins, every loser is told the winner, and the term grows by exactly one."""
    counted = FaultyStore(store)
    lock = PrimaryLock(counted)
    first = await lock.ensure("az1")
    assert first.term == 1
    for round_ in range(ROUNDS):
        before = await lock.read()
        assert before.record is not None
        source = before.record.zone
        targets = [zone for zone in ZONES if zone != source]
        puts = counted.calls["put"]
        won, lost = await race(counted, source, targets, before if shared_expectation else None)

        assert len(won) == 1, f"round {round_}: {len(won)} claims committed"
        winner = won[0]
        assert winner.zone in targets
        assert winner.term == before.record.term + 1
        assert len(lost) == CLAIMS_PER_ROUND - 1
        for taken in lost:
            assert (taken.zone, taken.term) == (winner.zone, winner.term), str(taken)
            assert taken.operation_id == winner.operation_id
        stored = await lock.read()
        assert stored.record == winner  # the winner's own write (its nonce), nothing after it
        if shared_expectation:
            assert counted.calls["put"] == puts + CLAIMS_PER_ROUND  # one CAS each, no retries
    final = await lock.read()
    assert final.term == 1 + ROUNDS


async def test_cross_activations_of_a_pair_leave_one_primary(store: ObjectStore) -> None:
    """Both sides activate at once, each naming the other as its source."""
    lock = PrimaryLock(store)
    await lock.ensure("az1")
    for round_ in range(ROUNDS):
        seen = await lock.read()
        assert seen.record is not None
        claims = [
            PrimaryLock(store).claim(
                source=source, zone=target, operation_id=f"r{round_}-{target}-{i}", expected=seen
            )
            for i in range(CLAIMS_PER_ROUND // 2)
            for source, target in (("az1", "az2"), ("az2", "az1"))
        ]
        outcomes = await asyncio.gather(*claims, return_exceptions=True)
        won = [o for o in outcomes if isinstance(o, PrimaryRecord)]
        assert len(won) == 1
        assert all(isinstance(o, PrimaryTaken | PrimaryRecord) for o in outcomes), outcomes
        assert won[0].zone != seen.record.zone
        assert won[0].term == seen.record.term + 1
        assert (await lock.read()).record == won[0]


@pytest.mark.parametrize("fence_epoch", ["lower", "higher"])
async def test_writer_of_the_old_term_is_fenced_by_the_activation(
    store: ObjectStore, fence_epoch: str
) -> None:
    """az1 backs up under term 1; az2 claims term 2 and writes a term-2 fence into az1's log.
    az1's writer stops at its next append, whatever the epochs, and its entry never counts."""
    timeline = Timeline()
    primary = PrimaryLock(store)
    record = await primary.ensure("az1")
    for n in range(1, 4):  # a few leaders of az1 before this one: its epoch is 3
        clock = FakeClock(timeline, auto_advance=True)
        keeper = LeaseKeeper(store, "az1", f"az1-agent-{n}", LeaseSettings(), clock=clock)
        epoch = await keeper.take_over(force=True)
    assert epoch == 3
    old = LogWriter(store, "az1", epoch, keeper.holder_id, clock=FakeClock(), term=record.term)
    await old.write_fence()
    kept = segment("az1", "kept")
    await old.append(kept)

    taken = await primary.claim(source="az1", zone="az2", operation_id="activation-1")
    assert taken.term == 2
    if fence_epoch == "higher":  # the documented path: take az1's lease over first
        source = LeaseKeeper(store, "az1", "az2-agent", LeaseSettings(), clock=FakeClock())
        new_epoch = await source.take_over(force=True)
        assert new_epoch > epoch
    else:  # a fencing agent that skipped the lease: only the term can stop the old writer
        new_epoch = 1
    fencer = LogWriter(store, "az1", new_epoch, "az2-agent", clock=FakeClock(), term=taken.term)
    fence = await fencer.write_fence(reason="activation-1")
    assert (fence.term, fence.epoch) == (2, new_epoch)

    with pytest.raises(Fenced) as fenced:
        await old.append(segment("az1", "stale"))
    assert old.is_fenced
    assert (fenced.value.term, fenced.value.newer_term) == (1, 2)
    catalog = await load_catalog(store, "az1")
    assert (catalog.term, catalog.epoch, catalog.anomalies) == (2, new_epoch, 0)
    assert catalog.segment(kept.table, "kept") is not None
    assert catalog.segment(kept.table, "stale") is None
