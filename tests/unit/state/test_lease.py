"""The lease, tick by tick on simulated time: expiry, self-fencing, release, forced take-over."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from az_agent.drivers.errors import Unavailable
from az_agent.state import (
    LeaseCorrupted,
    LeaseHeld,
    LeaseKeeper,
    LeaseRecord,
    LeaseSettings,
    LeaseState,
    LogWriter,
)
from az_agent.state.keys import lease_key
from tests.fakeclock import FakeClock, Timeline
from tests.unit.state.helpers import FaultyStore, Overlap, file_store, segment

ZONE = "az1"
SETTINGS = LeaseSettings()  # 15 s / 10 s / 2 s


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    opened = await file_store(tmp_path / "bucket")
    yield opened
    await opened.close()


@pytest.fixture
def timeline() -> Timeline:
    return Timeline()


def keeper(store: FaultyStore, timeline: Timeline, name: str, **clock: object) -> LeaseKeeper:
    fake = FakeClock(timeline, auto_advance=True, **clock)  # type: ignore[arg-type]
    return LeaseKeeper(store, ZONE, name, SETTINGS, clock=fake)


async def stored(store: FaultyStore) -> LeaseRecord:
    data, _ = await store.get(lease_key(ZONE))
    return LeaseRecord.decode(data, "lease")


def test_settings_defaults_and_validation() -> None:
    assert (SETTINGS.ttl_seconds, SETTINGS.renew_deadline_seconds) == (15, 10)
    assert SETTINGS.retry_period_seconds == 2
    parsed = LeaseSettings.model_validate(
        {"ttlSeconds": 30, "renewDeadlineSeconds": 20, "retryPeriodSeconds": 5}
    )
    assert parsed.renew_deadline_seconds == 20
    for bad in [(10, 10, 2), (15, 10, 10), (15, 20, 2), (15, 10, 0.5)]:
        with pytest.raises(ValidationError):
            LeaseSettings(
                ttl_seconds=bad[0], renew_deadline_seconds=bad[1], retry_period_seconds=bad[2]
            )


async def test_abdicate_stops_leading_at_once_and_writes_nothing(
    store: FaultyStore, timeline: Timeline
) -> None:
    a = keeper(store, timeline, "a")
    assert await a.tick()
    before = await store.head(lease_key(ZONE))
    a.abdicate()
    assert not a.is_leader
    assert a.status().is_leader is False
    assert (await store.head(lease_key(ZONE))).version == before.version


async def test_a_renewal_on_its_way_when_fenced_does_not_lead_again(
    store: FaultyStore, timeline: Timeline
) -> None:
    """Fenced (abdicate) while a renewal is in flight: the renewal lands, but the holder must
    not count as leader again (``/status`` showed ``leader`` true on a FENCED agent)."""
    a = keeper(store, timeline, "a")
    assert await a.tick()
    timeline.advance(2)

    async def fenced_meanwhile(op: str, key: str) -> None:
        if op == "put" and key.endswith("lease.json"):
            a.abdicate()

    store.after = fenced_meanwhile
    await a.tick()  # the renewal is stored
    store.after = _nothing_hook
    assert (await stored(store)).holder == "a"
    assert not a.is_leader
    timeline.advance(2)
    assert await a.tick()  # a renewal sent after the abdication leads again, as documented


async def test_acquire_absent_lease_with_epoch_one(store: FaultyStore, timeline: Timeline) -> None:
    a = keeper(store, timeline, "a")
    assert await a.tick()
    assert a.is_leader
    assert a.epoch == 1
    record = await stored(store)
    assert (record.holder, record.zone, record.epoch, record.state) == ("a", ZONE, 1, "active")
    raw = json.loads((await store.get(lease_key(ZONE)))[0])
    assert {"holder", "zone", "epoch", "ttlSeconds", "renewDeadlineSeconds", "state"} <= set(raw)
    assert {"acquiredAt", "renewedAt", "nonce"} <= set(raw)


async def test_renewal_keeps_epoch_with_a_fresh_nonce(
    store: FaultyStore, timeline: Timeline
) -> None:
    a = keeper(store, timeline, "a")
    await a.tick()
    first = await stored(store)
    timeline.advance(2)
    assert await a.tick()
    second = await stored(store)
    assert second.epoch == first.epoch == 1
    assert second.nonce != first.nonce
    assert second.acquired_at == first.acquired_at


async def test_wall_clocks_are_never_compared(store: FaultyStore, timeline: Timeline) -> None:
    """A's wall clock is a year behind and B's a year ahead: expiry still takes B's TTL."""
    a = keeper(store, timeline, "a", wall_offset=timedelta(days=-365))
    b = keeper(store, timeline, "b", wall_offset=timedelta(days=365), monotonic_offset=-5e6)
    await a.tick()
    assert not await b.tick()  # renewedAt looks a year stale to B: irrelevant
    timeline.advance(14.9)
    assert not await b.tick()
    timeline.advance(0.2)  # A's version has now been unchanged for 15.1 s on B's clock
    assert await b.tick()
    assert b.epoch == 2
    assert not a.is_leader


async def test_observer_counts_from_the_last_change(store: FaultyStore, timeline: Timeline) -> None:
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    await b.tick()
    timeline.advance(10)
    await a.tick()  # renewal: B starts counting again from its next read
    timeline.advance(1)
    await b.tick()
    timeline.advance(14)
    assert not await b.tick()
    assert (await b.observe()).seconds_unchanged == pytest.approx(14)
    timeline.advance(1)
    assert await b.tick()


async def test_holder_stops_at_the_renew_deadline(store: FaultyStore, timeline: Timeline) -> None:
    a = keeper(store, timeline, "a")
    await a.tick()
    store.down = True
    timeline.advance(9.99)
    assert a.is_leader
    timeline.advance(0.01)
    assert not a.is_leader  # 10 s after the renewal started: well before the 15 s TTL


async def test_outage_shorter_than_deadline_costs_nothing(
    store: FaultyStore, timeline: Timeline
) -> None:
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    await b.tick()
    store.down = True
    for _ in range(4):  # 8 s of failed renewals
        timeline.advance(2)
        with pytest.raises(Unavailable):
            await a.tick()
        assert a.is_leader
    store.down = False
    timeline.advance(1.5)
    assert await a.tick()
    timeline.advance(9)
    assert a.is_leader
    assert not await b.tick()
    assert a.epoch == 1


async def test_outage_longer_than_deadline_loses_before_the_ttl(
    store: FaultyStore, timeline: Timeline
) -> None:
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    await b.tick()  # B starts observing at t=0
    timeline.advance(10)
    assert not a.is_leader
    timeline.advance(4.9)
    assert not await b.tick()  # 14.9 s: the TTL has not run out for B yet
    timeline.advance(0.1)
    assert await b.tick()
    assert (a.is_leader, b.is_leader, b.epoch) == (False, True, 2)
    assert not await a.tick()  # A's CAS loses; it learns who holds the lease now
    assert a.status().record_holder == "b"


async def test_release_lets_the_other_side_take_over_at_once(
    store: FaultyStore, timeline: Timeline
) -> None:
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    assert await a.release()
    assert not a.is_leader
    record = await stored(store)
    assert (record.state, record.epoch, record.holder) == (LeaseState.RELEASED, 1, "a")
    assert await b.tick()
    assert b.epoch == 2


async def test_paused_lease_is_only_taken_explicitly(
    store: FaultyStore, timeline: Timeline
) -> None:
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    assert await a.release(LeaseState.PAUSED)
    assert not await b.tick()
    timeline.advance(100)
    assert not await b.tick()  # never "expires" into the election loop
    assert await b.take_over() == 2
    assert b.is_leader


async def test_release_that_cannot_write_raises_instead_of_returning_false(
    store: FaultyStore, timeline: Timeline
) -> None:
    """False means "held by another": a pause must not report a failed write as that."""
    a = keeper(store, timeline, "a")
    await a.tick()
    store.down = True
    with pytest.raises(Unavailable):
        await a.release(LeaseState.PAUSED)
    store.down = False
    assert not a.is_leader  # leadership ended before the write, whatever its outcome
    assert (await stored(store)).state is LeaseState.ACTIVE
    assert await a.tick(), "still ours: the next round renews it"
    assert await a.release(LeaseState.PAUSED)
    assert (await stored(store)).state is LeaseState.PAUSED


async def test_release_of_a_lease_taken_by_another_returns_false(
    store: FaultyStore, timeline: Timeline
) -> None:
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    await b.take_over(force=True)
    assert not await a.release(LeaseState.PAUSED)
    assert (await stored(store)).holder == "b"


async def test_take_over_refused_while_live_unless_forced(
    store: FaultyStore, timeline: Timeline
) -> None:
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    timeline.advance(3)
    with pytest.raises(LeaseHeld) as refused:
        await b.take_over()
    assert (refused.value.holder, refused.value.epoch) == ("a", 1)
    assert "held by 'a'" in str(refused.value)
    timeline.advance(4)
    with pytest.raises(LeaseHeld) as again:
        await b.take_over()
    assert again.value.seconds_unchanged == pytest.approx(4)
    assert await b.take_over(force=True) == 2
    assert not await a.tick()
    assert (await stored(store)).holder == "b"


async def test_forced_take_over_wins_against_a_renewal_in_between(
    store: FaultyStore, timeline: Timeline
) -> None:
    """The live holder renews between the forced take-over's read and its swap: the swap
    loses, so it reads again and swaps against the renewal (the holder is then fenced)."""
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    renewals = 0

    async def renew_first(op: str, key: str) -> None:
        nonlocal renewals
        if op == "put" and key.endswith("lease.json") and renewals < 2:
            renewals += 1
            store.before = _nothing_hook
            assert await a.tick()  # a's renewal lands before b's swap
            store.before = renew_first

    store.before = renew_first
    assert await b.take_over(force=True) == 2
    store.before = _nothing_hook
    assert renewals == 2
    assert (await stored(store)).holder == "b"
    assert not await a.tick()


async def _nothing_hook(op: str, key: str) -> None:
    del op, key


async def test_take_over_after_expiry_needs_no_force(
    store: FaultyStore, timeline: Timeline
) -> None:
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    await b.observe()
    timeline.advance(15)
    assert await b.take_over() == 2
    assert not a.is_leader


async def test_epoch_stays_above_the_log_when_the_lease_is_lost(
    store: FaultyStore, timeline: Timeline
) -> None:
    writer = LogWriter(store, ZONE, 7, "old", clock=FakeClock(timeline))
    await writer.write_fence()
    await writer.append(segment(ZONE, "s1"))
    a = keeper(store, timeline, "a")
    assert await a.tick()
    assert a.epoch == 8


async def test_lost_response_on_acquire_is_recognised(
    store: FaultyStore, timeline: Timeline
) -> None:
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    store.lose_put_responses = 1
    with pytest.raises(Unavailable):
        await a.tick()
    assert not a.is_leader
    timeline.advance(2)
    assert await a.tick()  # the record it reads carries its own nonce: it is the holder
    assert a.epoch == 1
    assert not await b.tick()


async def test_lost_response_on_renewal_is_recognised(
    store: FaultyStore, timeline: Timeline
) -> None:
    a = keeper(store, timeline, "a")
    await a.tick()
    timeline.advance(2)
    store.lose_put_responses = 1
    with pytest.raises(Unavailable):
        await a.tick()
    timeline.advance(2)
    assert await a.tick()
    assert a.epoch == 1
    assert (await stored(store)).holder == "a"


async def test_writes_to_one_lease_keep_the_stores_spacing(
    store: FaultyStore, timeline: Timeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GCS's one write a second per object is paced; other stores write back to back (an
    activation's take-over and release of the source's lease cost no second then)."""
    a = keeper(store, timeline, "a")
    await a.tick()
    before = timeline.elapsed
    await a.release()
    assert timeline.elapsed - before < 0.1
    monkeypatch.setattr(FaultyStore, "write_spacing", property(lambda self: 1.0))
    b = keeper(store, timeline, "b")
    await b.take_over()
    before = timeline.elapsed
    await b.release()
    assert timeline.elapsed - before >= 1.0
    assert store.calls["put"] == 4


async def test_corrupt_lease_is_reported_not_overwritten(
    store: FaultyStore, timeline: Timeline
) -> None:
    await store.put(lease_key(ZONE), b"{not json")
    a = keeper(store, timeline, "a")
    with pytest.raises(LeaseCorrupted):
        await a.tick()
    assert (await store.get(lease_key(ZONE)))[0] == b"{not json"


async def test_status_snapshot(store: FaultyStore, timeline: Timeline) -> None:
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    await b.observe()
    timeline.advance(3)
    status = a.status()
    assert (status.is_leader, status.epoch, status.record_holder) == (True, 1, "a")
    assert status.seconds_since_renewal == pytest.approx(3)
    other = b.status()
    assert (other.is_leader, other.epoch, other.record_holder) == (False, None, "a")
    assert other.seconds_unchanged == pytest.approx(3)


async def test_run_loop_publishes_changes_and_releases_on_exit(
    store: FaultyStore, timeline: Timeline
) -> None:
    a = LeaseKeeper(store, ZONE, "a", SETTINGS, clock=FakeClock(timeline))
    changes: list[tuple[float, bool]] = []
    a.add_listener(lambda leader: changes.append((timeline.elapsed, leader)))
    task = asyncio.create_task(a.run())
    try:
        await timeline.run(0, parked=2)  # the campaign and the watchdog, both idle
        await asyncio.wait_for(a.wait_leader(), 1)
        await timeline.run(20, parked=2)
        assert changes == [(0.0, True)]  # renewed every 2 s, never in doubt
        store.down = True
        await timeline.run(30, parked=2)
        assert [leader for _, leader in changes] == [True, False]
        assert changes[1][0] == pytest.approx(30.0, abs=0.01)  # last renewal at 20 + 10 s
        await asyncio.wait_for(a.wait_not_leader(), 1)
        store.down = False
        await timeline.run(2, parked=2)
        assert a.is_leader
        assert a.epoch == 1
    finally:
        task.cancel()
        await timeline.run(1, parked=1)  # the release on exit waits out the 1 s pacing
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert (await stored(store)).state is LeaseState.RELEASED
    assert changes[-1][1] is False


async def test_renewal_counts_from_when_it_was_sent(store: FaultyStore, timeline: Timeline) -> None:
    """A write whose response comes back late may have landed early: count from the send."""
    a = keeper(store, timeline, "a")
    await a.tick()
    timeline.advance(2)

    async def slow_response(op: str, key: str) -> None:
        timeline.advance(8)  # landed at once, answered 8 s later

    store.after = slow_response
    assert await a.tick()
    timeline.advance(1.9)
    assert a.is_leader
    timeline.advance(0.1)
    assert not a.is_leader  # 10 s after the renewal was sent, not after it was answered


async def test_a_take_over_reads_the_lease_and_the_log_tail_together(
    store: FaultyStore, timeline: Timeline
) -> None:
    """An activation's take-overs (the source's, then its own zone's) read the lease and look
    for the log's newest entry at once: one round trip, not two."""
    a, b = keeper(store, timeline, "a"), keeper(store, timeline, "b")
    await a.tick()
    assert await a.release(LeaseState.PAUSED)
    store.before = overlap = Overlap(("get", "head", "list"))
    assert await b.take_over() == 2
    assert overlap.peak >= 2
