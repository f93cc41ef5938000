"""A whole agent in this process: real lease, log, journal and backup loop on a file bucket, an
in-process Pinot emulator, and a store whose hooks let a test act at an exact point.

Lighter than tests/e2e (no S3, no PostgreSQL, no HTTP): pause, resume and recovery are driven
through the agent's own methods, the way the HTTP handlers call them. ``rig.running()`` starts
an agent and stops it at the end of the block as a cancelled ``az-agent run`` would; starting
another one on the same rig is a restart (a new incarnation, a new holder id).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.config import AgentConfig, parse_config
from az_agent.agent.daemon import Agent, AgentDeps
from az_agent.agent.leadership.loops import Retention, SegmentBackup
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.standby.cold import ColdStandby
from az_agent.drivers.alerts import Matcher, SilenceManager, open_silence_manager
from az_agent.drivers.kubernetes.base import WorkloadScaler
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.emulators.pinot import EmulatorOptions, PinotEmulator, SeedTable
from az_agent.state import LeaseRecord, LogEntry, SystemClock, read_entries
from az_agent.state.keys import lease_key
from tests.integration.leftovers import settle
from tests.servers.alertmanager import AlertmanagerServer
from tests.unit.state.helpers import FaultyStore, file_store, segment

ZONE = "az1"
TABLE = "events"
REALTIME_TABLE = f"{TABLE}_REALTIME"
LEASE = {"ttlSeconds": 4, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 1}


@dataclass
class Rig:
    """One zone's surroundings; agents come and go on it."""

    root: Path
    store: FaultyStore
    pinot: PinotEmulator
    alertmanager_url: str = ""
    matcher: str = ""
    task: asyncio.Task[None] | None = None
    """The running agent's ``run()``, for a test that stops it by hand."""
    cold_standby: dict[str, Any] | None = None
    """``coldStandby`` of the configuration (the workloads themselves: ``running(workloads=)``)."""

    @staticmethod
    async def no_hook(op: str, key: str) -> None:
        """What the store's ``before``/``after`` hooks are when a test is done interfering."""
        del op, key

    def config(self) -> AgentConfig:
        alertmanager: dict[str, Any] = {"url": self.alertmanager_url}
        if self.alertmanager_url:
            alertmanager["matchers"] = [{"name": "az_test", "value": self.matcher}]
        raw = {
            "global": {"cloudStorage": {"type": "file", "file": {"path": str(self.root)}}},
            "az-service": {
                "config": {
                    "zone": ZONE,
                    "role": "active",
                    "lease": LEASE,
                    "pinot": {"controllerUrl": self.pinot.url, "pollIntervalSeconds": 0.2},
                    "postgres": {"databases": []},
                    "alertmanager": alertmanager,
                    **({"coldStandby": self.cold_standby} if self.cold_standby else {}),
                }
            },
        }
        return parse_config(raw, environ={})

    def silences(self) -> SilenceManager:
        config = self.config().service.alertmanager
        matchers = [Matcher(m.name, m.value) for m in config.matchers]
        return open_silence_manager(config.url, matchers=matchers, created_by="az-agent-test")

    @contextlib.asynccontextmanager
    async def running(
        self,
        *,
        segment_backup: Callable[[HttpPinotController, AgentConfig], SegmentBackup] | None = None,
        silences: SilenceManager | None = None,
        retention: Retention | None = None,
        workloads: WorkloadScaler | None = None,
    ) -> AsyncIterator[Agent]:
        """An agent serving (as far as its methods go) for the block, then stopped."""
        before = set(asyncio.all_tasks())
        config = self.config()
        clock = SystemClock()
        metrics = AgentMetrics(ZONE)
        async with contextlib.AsyncExitStack() as stack:
            pinot = await stack.enter_async_context(HttpPinotController(self.pinot.url))
            manager = silences or self.silences()
            stack.push_async_callback(manager.close)
            if segment_backup is None:
                backup: SegmentBackup = SegmentBackupLoop(
                    pinot, config.service.pinot, metrics, clock
                )
            else:
                backup = segment_backup(pinot, config)
            agent = Agent(
                AgentDeps(
                    config=config,
                    store=self.store,
                    clock=clock,
                    pinot=pinot,
                    dumper=None,
                    silences=manager,
                    segment_backup=backup,
                    database_backup=None,
                    metrics=metrics,
                    retention=retention,
                    cold_standby=_cold(workloads, config, self.store, clock),
                )
            )
            ready = asyncio.Event()

            async def on_ready() -> None:
                ready.set()

            task = self.task = asyncio.create_task(agent.run(on_ready=on_ready))
            try:
                await asyncio.wait_for(ready.wait(), 10)
                yield agent
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await settle(before)  # a file open in a thread outlives the cancellation


def _cold(
    workloads: WorkloadScaler | None, config: AgentConfig, store: FaultyStore, clock: SystemClock
) -> ColdStandby | None:
    settings = config.service.cold_standby
    if workloads is None or not settings.enabled:
        return None
    namespace = settings.namespace or "kfuse"
    return ColdStandby(workloads, settings, namespace, store=store, zone=ZONE, clock=clock)


async def until(predicate: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def lease_record(store: FaultyStore, zone: str = ZONE) -> LeaseRecord:
    data, _ = await store.inner.get(lease_key(zone))
    return LeaseRecord.decode(data, lease_key(zone))


async def log_entries(store: FaultyStore, zone: str = ZONE) -> list[LogEntry]:
    return [entry async for entry in read_entries(store.inner, zone, 0)]


async def commit_segments(agent: Agent, count: int) -> None:
    """``count`` segment entries committed by the agent's leader session (objects first)."""
    session = agent.session
    assert session is not None, "the agent does not lead"
    for number in range(count):
        payload = segment(ZONE, f"{REALTIME_TABLE}__0__{number}__t", table=REALTIME_TABLE)
        await session.store.put(payload.key, b"tarball")
        await session.commit(payload)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await file_store(tmp_path / "bucket")
    seeds = [SeedTable(TABLE, "REALTIME", 2)]
    options = EmulatorOptions(seed=7, segment_size=16 << 10)
    try:
        async with PinotEmulator(tmp_path / "pinot", options=options, seed_tables=seeds) as pinot:
            yield Rig(tmp_path / "bucket", store, pinot)
    finally:
        await store.close()


@pytest.fixture(scope="session")
def alertmanager() -> Iterator[AlertmanagerServer]:
    server = AlertmanagerServer()
    server.start()
    yield server
    server.stop()
