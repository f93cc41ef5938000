"""Simulated time for lease tests: no real sleeps, every agent on one controllable timeline.

A :class:`Timeline` is the shared "real" time of a simulation; each :class:`FakeClock` is one
machine's view of it, with its own monotonic origin and its own (possibly very wrong) wall
clock, so tests can show that nothing compares clocks across machines. ``sleep`` either parks
until the timeline is advanced (for tests driving background loops), or, with
``auto_advance``, moves the timeline itself (for sequential simulations).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


class Timeline:
    """Shared simulated time, in seconds since the start of the simulation."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self.start = start
        self.elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper that is due."""
        if seconds < 0:
            raise ValueError("time does not go back")
        self.elapsed += seconds
        self._wake_due()

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self.elapsed:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def parked(self) -> int:
        """Sleepers still waiting."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def park(self, until: float) -> None:
        if until <= self.elapsed:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (until, next(self._order), future))
        await future

    async def settle(self, parked: int, limit: float = 10.0) -> None:
        """Wait (really) until ``parked`` sleepers wait, i.e. the simulated system is idle."""
        deadline = time.monotonic() + limit
        while self.parked < parked:
            if time.monotonic() > deadline:
                raise AssertionError(f"simulation stuck: {self.parked} of {parked} parked")
            await asyncio.sleep(0.001)

    async def run(self, seconds: float, *, parked: int) -> None:
        """Advance by ``seconds`` event by event, letting ``parked`` loops run at each wake-up."""
        target = self.elapsed + seconds
        while True:
            await self.settle(parked)
            live = [s for s in self._sleepers if not s[2].done()]
            due = min((s[0] for s in live), default=None)
            if due is None or due > target:
                self.elapsed = target
                return
            self.elapsed = max(self.elapsed, due)
            self._wake_due()


class FakeClock:
    """One machine's clocks on a :class:`Timeline` (implements ``az_agent.state.Clock``)."""

    def __init__(
        self,
        timeline: Timeline | None = None,
        *,
        monotonic_offset: float = 1000.0,
        wall_offset: timedelta = timedelta(0),
        auto_advance: bool = False,
    ) -> None:
        self.timeline = timeline or Timeline()
        self.monotonic_offset = monotonic_offset
        self.wall_offset = wall_offset
        self.auto_advance = auto_advance
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.timeline.elapsed + self.monotonic_offset

    def now(self) -> datetime:
        return self.timeline.start + timedelta(seconds=self.timeline.elapsed) + self.wall_offset

    async def sleep(self, seconds: float) -> None:
        self.slept += max(seconds, 0.0)
        if self.auto_advance:
            self.timeline.advance(max(seconds, 0.0))
            await asyncio.sleep(0)
        else:
            await self.timeline.park(self.timeline.elapsed + seconds)

    def advance(self, seconds: float) -> None:
        self.timeline.advance(seconds)
