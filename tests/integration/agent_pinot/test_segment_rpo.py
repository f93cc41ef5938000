"""The segment backup loop's recovery point: pending segments, Pinot unseen, no session."""

from __future__ import annotations

from datetime import timedelta

from az_agent.agent.backup.segments import blind_after
from az_agent.emulators.pinot import PinotEmulator
from tests.integration.agent_pinot.conftest import (
    Bucket,
    DeletingController,
    lead,
    running,
)
from tests.integration.agent_pinot.test_segment_backup import (
    ZONE,
    MovableWallClock,
    backup_loop,
    polled,
    produce,
    sample,
    until,
    wait_backed_up,
)
from tests.integration.pinot.support import RawHttp


class MovableClock(MovableWallClock):
    """The system's clocks, both of which the test can move forward."""

    def __init__(self) -> None:
        super().__init__()
        self.monotonic_ahead = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self.monotonic_ahead


async def test_rpo_is_zero_when_idle_and_grows_while_a_segment_is_pending(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, http: RawHttp
) -> None:
    session = await lead(file_bucket.store, ZONE)
    clock = MovableWallClock()
    loop = backup_loop(pinot, session, clock=clock)

    def gauge() -> float:
        return sample(session, "az_agent_rpo_seconds", kind="segments")

    assert loop.rpo_seconds() == 0
    async with running(loop.run(session)):
        await produce(source, "logs_OFFLINE")
        await wait_backed_up(session, pinot)
        assert (loop.rpo_seconds(), gauge()) == (0, 0)
        fault = {"path": "^/segments/logs/logs_", "method": "GET", "status": 503, "times": 1000}
        await http.admin("POST", "/faults", json=fault)
        await produce(source, "logs_OFFLINE")
        await until(lambda: loop.status()["pending"] == 1)
        first = loop.rpo_seconds()
        assert first > 0
        clock.ahead += timedelta(minutes=10)  # the segment waits ten minutes more
        second = loop.rpo_seconds()
        assert 600 <= second - first < 660
        assert gauge() >= second  # computed when scraped, not by the loop's rounds
        assert sample(session, "az_agent_segments_pending") == 1
        await http.admin("DELETE", "/faults")
        await wait_backed_up(session, pinot)
        await until(lambda: gauge() == 0)
    assert loop.rpo_seconds() == 0
    assert sample(session, "az_agent_segments_pending") == 0
    assert loop.status()["segmentsBackedUp"] == 2


async def test_rpo_is_not_zero_before_pinot_was_seen(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, http: RawHttp
) -> None:
    fault = {"path": "^/tables$", "method": "GET", "status": 503, "times": 1000}
    await http.admin("POST", "/faults", json=fault)  # the controller cannot list its tables
    session = await lead(file_bucket.store, ZONE)
    loop = backup_loop(pinot, session)
    assert loop.rpo_seconds() == 0  # not backing up: no recovery point to speak of
    async with running(loop.run(session)):
        await polled(pinot, 2)
        first = loop.rpo_seconds()
        await polled(pinot, 2)
        assert 0 < first < loop.rpo_seconds()  # counts from the session's start
        assert loop.status()["rpoSeconds"] > 0
        assert loop.stats.failures["discovery"] >= 2
        await http.admin("DELETE", "/faults")
        await until(lambda: loop.rpo_seconds() == 0)  # seen, and nothing waits
        assert loop.status()["lastPollAt"] is not None
    assert loop.rpo_seconds() == 0


async def test_rpo_climbs_while_pinot_goes_unseen_and_has_no_series_without_a_session(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, http: RawHttp
) -> None:
    session = await lead(file_bucket.store, ZONE)
    clock = MovableClock()
    loop = backup_loop(pinot, session, clock=clock)

    def series() -> float | None:
        return session.metrics.registry.get_sample_value(
            "az_agent_rpo_seconds", {"kind": "segments"}
        )

    assert (loop.recovery_point(), series()) == (None, None)  # not backing up: no series at all
    async with running(loop.run(session)):
        await until(lambda: loop.recovery_point() == 0)  # one complete look, nothing waits
        assert series() == 0
        fault = {"path": "^/tables$", "method": "GET", "status": 503, "times": 1000}
        await http.admin("POST", "/faults", json=fault)  # Pinot cannot be seen any more
        await polled(pinot, 2)
        assert loop.recovery_point() == 0  # within one poll interval and the margin
        clock.monotonic_ahead += 60  # a minute without a look
        blind = loop.recovery_point()
        assert blind is not None
        assert 60 <= blind < 60 + blind_after(0.05)  # all the time since the last look
        assert (series() or 0) >= 60
        await polled(pinot, 1)
        assert (loop.recovery_point() or 0) >= blind  # still blind: it climbs
        await http.admin("DELETE", "/faults")
        await until(lambda: loop.recovery_point() == 0)  # seen again: nothing waits
    assert (loop.recovery_point(), series()) == (None, None)
