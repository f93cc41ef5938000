"""What the chaos engine does to an in-process agent: signals, a fast clock, bucket weather.

An agent of a trial runs in the engine's event loop, so process signals are modelled at the
agent's edges, where a real signal would be felt:

* :class:`ProcessGate` -- ``SIGSTOP`` parks every bucket call, Pinot call and clock sleep of the
  agent at the gate (before the call and again before its answer is seen) until ``SIGCONT``:
  a stopped leader wakes up later with requests it built before the stop, the zombie fencing
  must refuse. ``SIGKILL`` makes every later call fail at once (``ProcessKilled``), before the
  engine cancels the agent's tasks, so nothing it would write on shutdown reaches the bucket.
  The monotonic clock keeps running through a stop, as it does for a stopped process.
* :class:`ChaosClock` -- one trial's time, ``speed`` times faster than real time, so that
  lease timings of seconds pass in a fraction of one. Every agent of a trial shares its
  timeline; sleeps are gated.
* :class:`Weather` -- the bucket's brownouts, shared by every agent of a trial: while one
  lasts, a fraction of requests fails with a retryable ``Unavailable`` before reaching the
  bucket, a fraction lands but loses its answer (the caller sees ``Unavailable`` for a write
  that happened), and requests are delayed. Seeded, so a trial's faults follow its seed.
* :class:`FaultyStore` and :class:`ChaosPinot` -- one agent incarnation's bucket handle and
  Pinot client, with the gate and the weather applied; ``ChaosPinot`` also records every
  segment upload under the operation that made it (the restore checker needs that).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from az_agent.drivers.errors import Unavailable
from az_agent.drivers.pinot.base import SegmentDownload, UploadBody
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.pinot.models import TableRef, UploadResult
from az_agent.drivers.storage.base import Body, ObjectInfo, ObjectReader, ObjectStore
from tests.servers.wrapped import WrappedStore


class ProcessKilled(Unavailable):
    """Raised by every call of an agent whose process was SIGKILLed."""


class Signal(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    KILLED = "killed"


class ProcessGate:
    """The signal state of one agent process (one incarnation)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._running = asyncio.Event()
        self._running.set()
        self.signal = Signal.RUNNING

    @property
    def is_running(self) -> bool:
        return self.signal is Signal.RUNNING

    def stop(self) -> None:
        """SIGSTOP: calls wait at the gate from now on."""
        if self.signal is Signal.RUNNING:
            self.signal = Signal.STOPPED
            self._running.clear()

    def cont(self) -> None:
        """SIGCONT: the waiting calls go on, in the order they arrived."""
        if self.signal is Signal.STOPPED:
            self.signal = Signal.RUNNING
            self._running.set()

    def kill(self) -> None:
        """SIGKILL: every waiting and later call fails."""
        self.signal = Signal.KILLED
        self._running.set()

    async def passage(self) -> None:
        """Return when the process runs; ``ProcessKilled`` once it is dead."""
        if not self._running.is_set():
            await self._running.wait()
        if self.signal is Signal.KILLED:
            raise ProcessKilled(f"agent {self.name} was killed (SIGKILL)")


class ChaosClock:
    """A trial's timeline seen by one agent: ``speed``x real time, sleeps gated.

    Implements ``az_agent.state.Clock``. Every clock of a trial shares ``origin`` and
    ``wall_start``, so the entries' wall times of different agents compare as one clock's.
    """

    def __init__(
        self, speed: float, origin: float, wall_start: datetime, gate: ProcessGate
    ) -> None:
        self.speed = speed
        self._origin = origin
        self._wall_start = wall_start
        self._gate = gate

    def elapsed(self) -> float:
        """Simulated seconds since the trial started."""
        return (time.monotonic() - self._origin) * self.speed

    def monotonic(self) -> float:
        return 1000.0 + self.elapsed()

    def now(self) -> datetime:
        return self._wall_start + timedelta(seconds=self.elapsed())

    async def sleep(self, seconds: float) -> None:
        await self._gate.passage()
        await asyncio.sleep(max(seconds, 0.0) / self.speed)
        await self._gate.passage()


@dataclass
class WeatherCounts:
    brownouts: int = 0
    failed: int = 0
    lost_answers: int = 0
    delayed: int = 0


@dataclass
class Weather:
    """Brownouts of one trial's bucket (see the module docstring)."""

    rng: random.Random
    speed: float
    fail_rate: float = 0.0
    lost_rate: float = 0.0
    max_delay: float = 0.0
    """Simulated seconds; each request waits a uniform share of it."""
    counts: WeatherCounts = field(default_factory=WeatherCounts)

    def brownout(self, fail_rate: float, lost_rate: float, max_delay: float) -> None:
        self.fail_rate, self.lost_rate, self.max_delay = fail_rate, lost_rate, max_delay
        self.counts.brownouts += 1

    def clear(self) -> None:
        self.fail_rate = self.lost_rate = self.max_delay = 0.0

    async def before(self, what: str) -> None:
        if self.max_delay > 0:
            self.counts.delayed += 1
            await asyncio.sleep(self.rng.uniform(0.0, self.max_delay) / self.speed)
        if self.fail_rate > 0 and self.rng.random() < self.fail_rate:
            self.counts.failed += 1
            raise Unavailable(f"chaos brownout: {what}: 503 SlowDown (injected)")

    def after(self, what: str) -> None:
        if self.lost_rate > 0 and self.rng.random() < self.lost_rate:
            self.counts.lost_answers += 1
            raise Unavailable(f"chaos brownout: {what}: connection reset after the request")


class FaultyStore(WrappedStore):
    """One agent incarnation's handle on the trial's bucket, with its gate and the weather.

    ``close`` leaves the shared store open: the engine owns it.
    """

    def __init__(self, inner: ObjectStore, gate: ProcessGate, weather: Weather) -> None:
        super().__init__(inner)
        self.gate = gate
        self.weather = weather

    async def _enter(self, what: str) -> None:
        await self.gate.passage()
        await self.weather.before(what)

    async def _leave(self, what: str, *, lost: bool) -> None:
        if lost:
            self.weather.after(what)
        await self.gate.passage()

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        await self._enter(f"put {key}")
        info = await self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match)
        await self._leave(f"put {key}", lost=True)
        return info

    def open(
        self, key: str, *, chunk_size: int = 1 << 20
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self._open(key, chunk_size)

    @asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        await self._enter(f"get {key}")
        async with self.inner.open(key, chunk_size=chunk_size) as reader:
            await self._leave(f"get {key}", lost=False)
            yield reader

    async def head(self, key: str) -> ObjectInfo:
        await self._enter(f"head {key}")
        info = await self.inner.head(key)
        await self._leave(f"head {key}", lost=False)
        return info

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        await self._enter(f"list {prefix}")
        async for info in self.inner.list(prefix, page_size=page_size):
            await self.gate.passage()
            yield info

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        await self._enter(f"delete {key}")
        await self.inner.delete(key, if_match=if_match)
        await self._leave(f"delete {key}", lost=True)

    async def check(self) -> None:
        await self._enter("check")
        await self.inner.check()

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Upload:
    """A segment upload an agent started: under which operation, of what."""

    operation: str | None
    table: str
    segment: str


class ChaosPinot(HttpPinotController):
    """The agent's Pinot client, gated like its bucket calls; records every upload."""

    def __init__(
        self,
        base_url: str,
        gate: ProcessGate,
        uploads: list[Upload],
        operation: Callable[[], str | None],
    ) -> None:
        # http only: no TLS context (building one costs more than a whole poll)
        super().__init__(base_url, tls_verify=False, timeout_seconds=30.0)
        self._gate = gate
        self._uploads = uploads
        self._operation = operation

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
    ) -> Any:
        await self._gate.passage()
        answer = await super()._call(method, path, params=params, json_body=json_body)
        await self._gate.passage()
        return answer

    def download_segment(
        self, table: TableRef | str, segment: str
    ) -> AbstractAsyncContextManager[SegmentDownload]:
        return self._download_gated(table, segment)

    @asynccontextmanager
    async def _download_gated(
        self, table: TableRef | str, segment: str
    ) -> AsyncIterator[SegmentDownload]:
        await self._gate.passage()
        async with super().download_segment(table, segment) as download:
            yield download

    async def upload_segment(
        self,
        table: TableRef,
        body: UploadBody,
        *,
        segment_name: str,
        allow_refresh: bool = True,
        if_match_crc: int | None = None,
    ) -> UploadResult:
        await self._gate.passage()
        self._uploads.append(Upload(self._operation(), table.name_with_type, segment_name))
        result = await super().upload_segment(
            table,
            body,
            segment_name=segment_name,
            allow_refresh=allow_refresh,
            if_match_crc=if_match_crc,
        )
        await self._gate.passage()
        return result
