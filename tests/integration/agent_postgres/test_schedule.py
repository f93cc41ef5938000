"""When the loop dumps: soon after it starts, then every interval, on demand (coalesced), only
while it holds a session; failures retried with backoff, counted, and never committed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from az_agent.agent.backup.postgres import DumpFailed
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.storage.base import Body, ObjectInfo
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import Fenced, NotLeader
from tests.fakeclock import FakeClock
from tests.integration.agent_postgres.helpers import (
    INTERVAL,
    ZONE,
    backup_loop,
    dump_entries,
    entries,
    failures,
    gauge,
    lead,
    object_keys,
    running,
    until,
)
from tests.integration.postgres.helpers import create_db, fake_tool, seeded
from tests.integration.postgres.stores import WrappedStore
from tests.servers.postgres import PostgresServer


async def test_first_dump_soon_then_every_interval_and_only_with_a_session(
    zone1: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await seeded(zone1, dbname)
    store = FileObjectStore(tmp_path / "bucket")
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    loop = backup_loop(zone1, clock, metrics, [dbname])
    clock.advance(3 * INTERVAL)  # no session yet: nothing happens, and nothing on demand
    with pytest.raises(NotLeader):
        await loop.dump_now("no session")
    assert loop.status()["databases"][dbname]["nextRunInSeconds"] is None
    assert gauge(metrics, "az_agent_rpo_seconds", kind="postgres") is None  # not backing up
    assert gauge(metrics, "az_agent_postgres_dump_age_seconds", database=dbname) is None

    session = await lead(store, clock, metrics)
    async with running(loop, session):
        await clock.timeline.settle(1)
        assert await dump_entries(store) == []
        assert loop.status()["databases"][dbname]["nextRunInSeconds"] == 5
        clock.advance(4)  # one second before the first run is due: still nothing
        await clock.timeline.settle(1)
        assert await dump_entries(store) == []
        assert loop.status()["databases"][dbname]["nextRunInSeconds"] == 1
        clock.advance(1)  # due now
        await until(lambda: len(session.catalog.dumps(dbname)) == 1)
        await clock.timeline.settle(1)
        status = loop.status()
        assert status["leading"]
        assert status["epoch"] == session.epoch
        db_status = status["databases"][dbname]
        assert db_status["nextRunInSeconds"] == INTERVAL
        assert db_status["newestDump"]["seq"] == session.catalog.dumps(dbname)[0].seq
        assert db_status["failures"] == 0
        assert db_status["lastError"] is None

        clock.advance(INTERVAL - 1)  # one second before the next run: still one dump
        await clock.timeline.settle(1)
        assert len(session.catalog.dumps(dbname)) == 1
        assert len(await dump_entries(store)) == 1
        assert loop.status()["databases"][dbname]["nextRunInSeconds"] == 1
        assert loop.rpo_seconds() == INTERVAL - 1
        assert gauge(metrics, "az_agent_rpo_seconds", kind="postgres") == INTERVAL - 1
        assert gauge(metrics, "az_agent_postgres_dump_age_seconds", database=dbname) == (
            INTERVAL - 1
        )
        clock.advance(0.5)  # ages are computed when scraped, not when the loop wakes
        assert gauge(metrics, "az_agent_rpo_seconds", kind="postgres") == INTERVAL - 0.5
        assert gauge(metrics, "az_agent_postgres_dump_age_seconds", database=dbname) == (
            INTERVAL - 0.5
        )
        clock.advance(0.5)  # due now
        await until(lambda: len(session.catalog.dumps(dbname)) == 2)
    first, second = await dump_entries(store)
    assert (second.started_at - first.started_at).total_seconds() == INTERVAL
    assert gauge(metrics, "az_agent_postgres_dump_size_bytes", database=dbname) == second.size

    # The session ended: the loop has returned and nothing waits on the clock any more, so
    # however far time moves, no dump can start.
    assert not loop.is_running
    assert clock.timeline.parked == 0
    assert gauge(metrics, "az_agent_rpo_seconds", kind="postgres") is None  # no longer
    assert gauge(metrics, "az_agent_postgres_dump_age_seconds", database=dbname) is None
    clock.advance(3 * INTERVAL)
    assert loop.status()["databases"][dbname]["nextRunInSeconds"] is None
    assert len(await object_keys(store)) == 2
    assert len(await dump_entries(store)) == 2
    with pytest.raises(NotLeader):
        await loop.dump_now("after the session")


class GatedStore(WrappedStore):
    """Holds every dump upload at its start until ``gate`` opens; counts them."""

    def __init__(self, inner: FileObjectStore) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.uploads = 0

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        if "/postgres/" in key:
            self.uploads += 1
            await self.gate.wait()
        return await self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match)


def requests_logged(caplog: pytest.LogCaptureFixture, reason: str) -> int:
    """How many on-demand requests whose reason starts with ``reason`` the loop has taken in."""
    start = f"PostgreSQL dump requested ({reason}"
    return sum(1 for record in caplog.records if record.getMessage().startswith(start))


async def test_on_demand_dumps_coalesce_into_one_more_run(
    zone1: PostgresServer, tmp_path: Path, dbname: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="az_agent.agent.backup.postgres")
    await seeded(zone1, dbname)
    store = GatedStore(FileObjectStore(tmp_path / "bucket"))
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    loop = backup_loop(zone1, clock, metrics, [dbname], options={"first_delay_seconds": INTERVAL})
    async with running(loop, await lead(store, clock, metrics)):
        first = asyncio.create_task(loop.dump_now("first"))
        await until(lambda: store.uploads == 1)  # a run is in progress
        later = [asyncio.create_task(loop.dump_now(f"later {n}")) for n in range(3)]
        await until(lambda: requests_logged(caplog, "later") == 3)  # all queued or joined
        later[2].cancel()  # a caller that gives up does not cancel the run the others share
        store.gate.set()
        [a] = await asyncio.wait_for(first, 20)
        [b], [c] = await asyncio.wait_for(asyncio.gather(*later[:2]), 20)
        with pytest.raises(asyncio.CancelledError):
            await later[2]
        assert b == c  # one run served every request made while the first one ran
        assert b.seq > a.seq
        assert store.uploads == 2
        [d] = await loop.dump_now("idle again")
        assert d.seq > b.seq
    assert [p.key for p in await dump_entries(store)] == [a.key, b.key, d.key]


async def test_failures_are_counted_retried_with_backoff_and_never_committed(
    zone1: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await seeded(zone1, dbname)
    missing = f"{dbname}_missing"
    store = FileObjectStore(tmp_path / "bucket")
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    options = {"first_delay_seconds": 0.0}
    loop = backup_loop(zone1, clock, metrics, [dbname, missing], options=options)
    async with running(loop, await lead(store, clock, metrics)):
        await until(lambda: failures(metrics, "not-found") == 1)
        await clock.timeline.settle(1)
        state = loop.status()["databases"][missing]
        assert (state["failures"], state["nextRunInSeconds"]) == (1, 30)
        assert missing in state["lastError"]
        for advance, expected in [(30, 2), (59, 2), (1, 3)]:  # retried after 30 s, then 60 s
            clock.advance(advance)
            await clock.timeline.settle(1)
            assert failures(metrics, "not-found") == expected
        assert loop.status()["databases"][missing]["nextRunInSeconds"] == 120

        with pytest.raises(DumpFailed, match=missing) as caught:
            await loop.dump_now("pause")
        assert list(caught.value.failures) == [missing]
        assert [r.database for r in caught.value.records] == [dbname]
        assert failures(metrics, "not-found") == 4
        # a database never dumped counts from the loop's start: it sets the recovery point
        assert loop.rpo_seconds() == 90
        assert gauge(metrics, "az_agent_postgres_dump_age_seconds", database=dbname) == 0
        assert gauge(metrics, "az_agent_postgres_dump_age_seconds", database=missing) == 90
    assert {p.database for p in await dump_entries(store)} == {dbname}
    assert all(f"/{missing}/" not in key for key in await object_keys(store))


async def test_tool_failure_is_logged_with_its_stderr(
    zone1: PostgresServer, tmp_path: Path, dbname: str, caplog: pytest.LogCaptureFixture
) -> None:
    await create_db(zone1, dbname)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    version = 'case "$1" in --version) echo "pg_dump (PostgreSQL) 15.18"; exit 0;; esac\n'
    fake_tool(bin_dir, "pg_dump", version + "echo 'pg_dump: error: disk on fire' >&2\nexit 1\n")
    fake_tool(bin_dir, "pg_restore", version.replace("pg_dump", "pg_restore"))
    store = FileObjectStore(tmp_path / "bucket")
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    options = {"first_delay_seconds": 0.0}
    loop = backup_loop(zone1, clock, metrics, [dbname], options=options, bin_dir=str(bin_dir))
    caplog.set_level(logging.WARNING, logger="az_agent.agent.backup.postgres")
    async with running(loop, await lead(store, clock, metrics)):
        await until(lambda: failures(metrics, "tool") == 1)
    assert "disk on fire" in loop.status()["databases"][dbname]["lastError"]
    assert any("disk on fire" in r.getMessage() for r in caplog.records)
    assert await dump_entries(store) == []
    assert await object_keys(store) == []


async def test_a_fenced_loop_ends_quietly_and_commits_nothing(
    zone1: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await seeded(zone1, dbname)
    store = FileObjectStore(tmp_path / "bucket")
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    loop = backup_loop(zone1, clock, metrics, [dbname], options={"first_delay_seconds": INTERVAL})
    old = await lead(store, clock, metrics)
    task = asyncio.create_task(loop.run(old))
    await until(lambda: loop.is_running)
    new = await lead(store, clock, metrics)  # another agent takes the zone over
    assert new.epoch > old.epoch
    with pytest.raises(Fenced):
        await loop.dump_now("pause")
    await asyncio.wait_for(task, 10)  # returned, not raised
    assert not loop.is_running
    assert await dump_entries(store) == []
    assert [e.payload.kind for e in await entries(store)] == ["fence", "fence"]
    assert len(await object_keys(store)) == 1  # an orphan, for the sweep
