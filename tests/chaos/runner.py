"""Many trials: a bucket per trial, several trials at once on one event loop, one summary.

Shared by ``tests/chaos/test_chaos.py`` and ``python -m benchmarks.chaos``. Trials mostly wait
(leases, polls, the emulators' commits), so ``concurrency`` of them interleave on one loop.
Trial seeds are ``base, base + 1, ...``: trial ``base + k`` replays alone with
``--seed base+k --trials 1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.config import CloudStorageSettings, FileSettings, StorageSecrets
from az_agent.drivers.storage.factory import open_object_store
from az_agent.drivers.storage.prefixed import PrefixedObjectStore
from tests.chaos.agents import owned_tasks
from tests.chaos.checker import INVARIANTS, Violation
from tests.chaos.engine import Trial, TrialResult, TrialSpec
from tests.servers.base import StorageBackend

DELETE_CONCURRENCY = 16
TRACE_LINES = 150


class Buckets(Protocol):
    """Hands each trial a fresh, empty store; removes what the trial left afterwards."""

    def trial(self, spec: TrialSpec) -> contextlib.AbstractAsyncContextManager[ObjectStore]: ...


class FileBuckets:
    """A temporary directory per trial."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.asynccontextmanager
    async def trial(self, spec: TrialSpec) -> AsyncIterator[ObjectStore]:
        path = self.root / f"bucket-{spec.seed}-{uuid.uuid4().hex[:6]}"
        settings = CloudStorageSettings(type="file", file=FileSettings(path=str(path)))
        store = await open_object_store(settings)
        try:
            yield store
        finally:
            await store.close()
            await asyncio.to_thread(shutil.rmtree, path, True)


class NetworkBuckets:
    """One bucket of a real server for the whole run, a key prefix per trial (emptied after)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(
        cls, settings: CloudStorageSettings, secrets: StorageSecrets | None
    ) -> AsyncIterator[NetworkBuckets]:
        store = await open_object_store(settings, secrets)
        try:
            await store.check()
            yield cls(store)
        finally:
            await store.close()

    @contextlib.asynccontextmanager
    async def trial(self, spec: TrialSpec) -> AsyncIterator[ObjectStore]:
        store = PrefixedObjectStore(self.store, f"chaos-{spec.seed}-{uuid.uuid4().hex[:6]}")
        try:
            yield store
        finally:
            await _empty(store)


S3_SERVERS = {
    "seaweedfs": "tests.servers.seaweedfs:SeaweedFSBackend",
    "moto": "tests.servers.moto:MotoBackend",
}


def s3_server(name: str = "seaweedfs") -> StorageBackend:
    """The S3 server the ``s3`` trials run against (not started): SeaweedFS by default, a real
    S3 implementation that honours every precondition; ``moto`` as the alternative."""
    module_name, class_name = S3_SERVERS[name].split(":")
    backend: StorageBackend = getattr(importlib.import_module(module_name), class_name)()
    return backend


async def _empty(store: ObjectStore) -> None:
    keys = [info.key async for info in store.list("")]
    limit = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def delete(key: str) -> None:
        async with limit:
            await store.delete(key)

    await asyncio.gather(*(delete(key) for key in keys))


@dataclass
class Summary:
    trials: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    """Trials per ``store / zones``."""
    operations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    violating: dict[int, TrialSpec] = field(default_factory=dict)
    traces: dict[int, list[str]] = field(default_factory=dict)
    """What happened in each violating trial (see ``Trial.trace``)."""
    anomalies: list[str] = field(default_factory=list)
    entries: int = 0
    checked: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    slowest: float = 0.0
    leaks: Counter[str] = field(default_factory=Counter)
    """ResourceWarnings raised while the trials ran (driver resources left unclosed)."""
    lags: list[float] = field(default_factory=list)
    """Event-loop lag samples, real seconds."""

    def add(self, result: TrialResult) -> None:
        spec = result.spec
        self.trials += 1
        self.by_kind[f"{spec.store}, {spec.zones} zones"] += 1
        self.operations.update(result.operations)
        self.faults.update(result.faults)
        self.violations += result.violations
        if result.violations:
            self.violating[spec.seed] = spec
            self.traces[spec.seed] = result.trace
        self.anomalies += result.anomalies
        self.entries += result.entries
        self.checked.update(result.checked)
        self.slowest = max(self.slowest, result.seconds)

    @property
    def operation_count(self) -> int:
        return sum(n for name, n in self.operations.items() if not name.startswith("activation "))

    @property
    def fault_count(self) -> int:
        return sum(n for name, n in self.faults.items() if name in ("kill", "stop", "brownout"))

    def lag_text(self) -> str:
        if not self.lags:
            return "not measured"
        ordered = sorted(self.lags)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return f"p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"

    def trace_report(self) -> str:
        """The traces of the violating trials, one block each."""
        blocks = []
        for seed, trace in sorted(self.traces.items()):
            shown = trace[-TRACE_LINES:]
            skipped = (
                f" (last {len(shown)} of {len(trace)} events)" if len(shown) < len(trace) else ""
            )
            blocks.append(f"--- trace of seed {seed}{skipped}\n" + "\n".join(shown))
        return "\n".join(blocks)

    def report(self) -> str:
        by_invariant = Counter(v.invariant for v in self.violations)
        lines = [
            f"trials: {self.trials} ({_counts(self.by_kind)}) in {self.seconds:.1f}s "
            f"(slowest {self.slowest:.1f}s, event-loop lag {self.lag_text()}), "
            f"{self.entries} log entries checked",
            f"operations: {self.operation_count} ({_counts(self.operations)})",
            f"faults: {self.fault_count} signals and brownouts ({_counts(self.faults)})",
            f"checked: {_counts(self.checked)}",
            f"violations: {len(self.violations)} in {len(self.violating)} trials ("
            + ", ".join(f"{name} {by_invariant[name]}" for name in INVARIANTS)
            + ")",
        ]
        lines += [f"  {violation}" for violation in self.violations]
        lines += [f"  replay: {spec.replay()}" for spec in self.violating.values()]
        if self.leaks:
            lines.append(
                f"resources left unclosed by cancelled agents: {sum(self.leaks.values())} "
                f"({_counts(self.leaks)})"
            )
        if self.anomalies:
            lines.append(f"anomalies (not safety violations): {len(self.anomalies)}")
            lines += [f"  {anomaly}" for anomaly in self.anomalies]
        return "\n".join(lines)


SETTLE_THREADS = 5.0


async def _settle_threads(before: set[asyncio.Task[Any]]) -> None:
    """Wait (at most ``SETTLE_THREADS`` s) for the ``to_thread`` calls the trials left: a
    cancelled agent's file I/O runs on in its thread, and what it opened must come back to
    the loop to be closed before anyone looks for leaks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_THREADS
    while loop.time() < deadline:
        pending = [
            task
            for task in asyncio.all_tasks() - before
            if not task.done() and getattr(task.get_coro(), "__name__", "") == "to_thread"
        ]
        if not pending:
            return
        await asyncio.wait(pending, timeout=deadline - loop.time())


async def _reap(before: set[asyncio.Task[Any]], anomalies: list[str]) -> None:
    """Cancel what the trials left running (an agent that ignored its cancellation leaves its
    tasks parked), every task at once so that the innermost one ends too; say which."""
    for _ in range(3):
        left = [
            task
            for task in asyncio.all_tasks() - before
            if not task.done() and task is not asyncio.current_task()
        ]
        if not left:
            return
        anomalies.append(
            f"{len(left)} tasks still ran after their trials and were cancelled again: "
            + ", ".join(sorted({f"{t.get_name()} ({_qualname(t)})" for t in left}))
        )
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=SETTLE_THREADS)


def _qualname(task: asyncio.Task[Any]) -> str:
    return str(getattr(task.get_coro(), "__qualname__", "?"))


@contextlib.contextmanager
def _leaks_counted(leaks: Counter[str]) -> Iterator[None]:
    """Count the resources the agents' drivers leave unclosed when a trial kills (cancels)
    them mid-call, instead of letting each one fail the run: they are reported as findings,
    beside the safety violations, and are not violations. Other unraisable errors pass on."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, ResourceWarning):
            message = str(unraisable.exc_value)
            leaks[message.split(" name=")[0].split(" <")[0] + _leak_place(message)] += 1
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _leak_place(message: str) -> str:
    """Which kind of object: a temporary part of a put, a log entry, a lease, ..."""
    for marker, kind in (
        (".part", "put temp file"),
        ("/log/", "log entry"),
        ("lease", "lease"),
        ("primary/", "primary record"),
        ("/segments/", "segment"),
    ):
        if marker in message:
            return f" ({kind})"
    return ""


LAG_PROBE = 0.05
LAG_WINDOW = 20
"""Samples (of ``LAG_PROBE`` s each) that make the recent lag."""
LAG_LIMIT = 0.5
"""Simulated seconds: a trial starts only once the event loop wakes sleepers this promptly."""
ADMISSION_WAIT = 20.0


class LagMonitor:
    """How late the event loop wakes a sleeper. The trials' clocks run ``speed`` times faster
    than real time, so a late loop ages leases (more churn, never less safety); new trials
    wait for a prompt loop (:meth:`calm`), so a loaded machine runs fewer at once."""

    def __init__(self, samples: list[float]) -> None:
        self.samples = samples
        self._sampled = asyncio.Condition()

    def recent(self) -> float:
        return max(self.samples[-LAG_WINDOW:], default=0.0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE)
            self.samples.append(loop.time() - before - LAG_PROBE)
            async with self._sampled:
                self._sampled.notify_all()

    async def calm(self, limit: float, idle: Callable[[], bool]) -> None:
        """Return once the recent lag is at most ``limit`` (or ``idle()``, or after
        ``ADMISSION_WAIT`` seconds)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ADMISSION_WAIT), self._sampled:
                await self._sampled.wait_for(lambda: idle() or self.recent() <= limit)


THREADS_PER_TRIAL = 4


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """A default executor of ``count`` threads while trials run, the loop's own afterwards.

    The file store and the emulators work in threads (``asyncio.to_thread``); the loop's
    default pool (CPUs + 4 threads) would queue a dozen trials' calls behind each other, and
    on a clock ten times faster than real time that queueing alone would expire leases.
    """
    loop = asyncio.get_running_loop()
    previous = getattr(loop, "_default_executor", None)
    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="chaos")
    loop.set_default_executor(pool)
    try:
        yield
    finally:
        setattr(loop, "_default_executor", previous)  # noqa: B010 (no public way back)
        pool.shutdown(wait=False)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items()))


async def run_trials(
    specs: Iterable[TrialSpec],
    buckets: dict[str, Buckets],
    *,
    concurrency: int = 8,
    on_result: Callable[[TrialResult], None] | None = None,
    log_level: int = logging.CRITICAL + 1,
) -> Summary:
    """Run every trial, ``concurrency`` at a time; the summary of them all."""
    summary = Summary()
    started = time.monotonic()
    limit = asyncio.Semaphore(concurrency)
    logger = logging.getLogger("az_agent")
    previous = logger.level
    logger.setLevel(log_level)

    running = 0

    async def one(spec: TrialSpec) -> None:
        nonlocal running
        async with limit:
            await monitor.calm(LAG_LIMIT / spec.speed, lambda: running == 0)
            running += 1
            try:
                result = await run_trial(spec, buckets[spec.store])
            finally:
                running -= 1
        summary.add(result)
        if on_result is not None:
            on_result(result)

    before = asyncio.all_tasks()
    monitor = LagMonitor(summary.lags)
    lag = asyncio.create_task(monitor.run())
    try:
        with (
            _threads(THREADS_PER_TRIAL * concurrency),
            _leaks_counted(summary.leaks),
            owned_tasks(),
        ):
            try:
                await asyncio.gather(*(one(spec) for spec in specs))
            finally:
                await _settle_threads(before)
                await _reap(before | {lag}, summary.anomalies)
    finally:
        logger.setLevel(previous)
        lag.cancel()
        await asyncio.gather(lag, return_exceptions=True)
    summary.seconds = time.monotonic() - started
    return summary


async def run_trial(spec: TrialSpec, buckets: Buckets) -> TrialResult:
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f"chaos-{spec.seed}-"))
    try:
        async with buckets.trial(spec) as store:
            return await Trial(spec, store, workdir).run()
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)


def specs(
    base: int, count: int, store: str, zones: Iterable[int], speed: float = 0.0
) -> list[TrialSpec]:
    """``count`` trials from seed ``base`` on, cycling through the zone counts given."""
    sizes = list(zones)
    return [TrialSpec(base + i, store, sizes[i % len(sizes)], speed=speed) for i in range(count)]
