"""A leading agent in miniature: a real lease, log writer, catalog and backup loop on a file
store, with a controllable clock for the loop and its log (real servers underneath)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import SecretStr

from az_agent.agent.backup.postgres import PostgresBackupLoop
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.postgres.dumper import PgDumper
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import (
    DumpDeletedPayload,
    DumpPayload,
    LeaseKeeper,
    LeaseSettings,
    LogEntry,
    LogWriter,
    load_catalog,
    new_holder_id,
    read_entries,
)
from tests.fakeclock import FakeClock, Timeline
from tests.servers.postgres import PostgresServer

ZONE = "az1"
INTERVAL = 3600.0


def pg_dumper(server: PostgresServer, clock: FakeClock, **overrides: Any) -> PgDumper:
    """A dumper whose timestamps come from the test's clock, like the loop's."""
    return PgDumper(server.settings(**overrides), SecretStr(server.password), clock=clock.now)


def backup_loop(
    server: PostgresServer,
    clock: FakeClock,
    metrics: AgentMetrics,
    databases: list[str],
    *,
    options: dict[str, float] | None = None,
    **overrides: Any,
) -> PostgresBackupLoop:
    """The loop over ``databases`` of ``server``, every :data:`INTERVAL` seconds."""
    settings = server.settings(databases=databases, **overrides)
    dumper = PgDumper(settings, SecretStr(server.password), clock=clock.now)
    return PostgresBackupLoop(dumper, settings, INTERVAL, metrics, clock, **(options or {}))


async def lead(store: ObjectStore, clock: FakeClock, metrics: AgentMetrics) -> LeaderSession:
    """Take the zone's lease (waiting out a dead holder's TTL), fence the log, load the catalog.

    The lease runs on a timeline of its own that the test never moves, so it stays fresh while
    the loop's clock jumps hours ahead (lease expiry is tested in tests/integration/state).
    """
    lease_clock = FakeClock(Timeline())
    keeper = LeaseKeeper(store, ZONE, new_holder_id("agent"), LeaseSettings(), clock=lease_clock)
    if not await keeper.tick():
        lease_clock.advance(LeaseSettings().ttl_seconds + 1)
        assert await keeper.tick()
    epoch = keeper.epoch
    assert epoch is not None
    writer = LogWriter(
        store,
        ZONE,
        epoch,
        keeper.holder_id,
        clock=clock,
        guard=lambda: keeper.is_leader and keeper.epoch == epoch,
    )
    await writer.write_fence(reason="test")
    catalog = await load_catalog(store, ZONE)
    return LeaderSession(ZONE, epoch, store, writer, catalog, metrics, clock)


@contextlib.asynccontextmanager
async def running(loop: PostgresBackupLoop, session: LeaderSession) -> AsyncIterator[None]:
    """The loop's task while the block runs, cancelled and awaited after it."""
    task = asyncio.create_task(loop.run(session))
    try:
        await until(lambda: loop.is_running)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not loop.is_running


async def until(predicate: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def entries(store: ObjectStore) -> list[LogEntry]:
    return [entry async for entry in read_entries(store, ZONE, 0)]


async def dump_entries(store: ObjectStore, database: str | None = None) -> list[DumpPayload]:
    found = [e.payload for e in await entries(store) if isinstance(e.payload, DumpPayload)]
    return [p for p in found if database is None or p.database == database]


async def deletions(store: ObjectStore) -> list[DumpDeletedPayload]:
    return [e.payload for e in await entries(store) if isinstance(e.payload, DumpDeletedPayload)]


async def object_keys(store: ObjectStore, prefix: str = f"{ZONE}/postgres/") -> list[str]:
    return sorted([info.key async for info in store.list(prefix)])


def failures(metrics: AgentMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "az_agent_backup_failures_total", {"kind": "postgres", "reason": reason}
    )
    return value or 0.0


def gauge(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)
