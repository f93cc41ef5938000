"""Dumps committed by the loop in zone 1, found again through the log, restored in zone 2."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.restore.postgres import (
    NoBackup,
    RestoreFailed,
    RestoreProgress,
    plan_restore,
    restore_databases,
)
from az_agent.drivers.errors import CorruptObject
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import load_catalog
from tests.fakeclock import FakeClock
from tests.integration.agent_postgres.helpers import (
    ZONE,
    backup_loop,
    dump_entries,
    lead,
    pg_dumper,
    running,
    until,
)
from tests.integration.postgres.helpers import connect, flip_byte, scratch_databases, seeded
from tests.integration.postgres.schema import ROWS, snapshot
from tests.servers.postgres import PostgresServer


async def test_round_trip_through_the_log(
    zone1: PostgresServer, zone2: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    names = [f"{dbname}_config", f"{dbname}_orch"]
    for variant, name in enumerate(names, start=1):
        await seeded(zone1, name, variant)
    store = FileObjectStore(tmp_path / "bucket")
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    loop = backup_loop(zone1, clock, metrics, names)
    session = await lead(store, clock, metrics)
    async with running(loop, session):
        await clock.timeline.settle(1)
        clock.advance(5)  # the first run is due soon after start
        await until(lambda: session.catalog.databases() == sorted(names))
    committed = await dump_entries(store)
    assert [p.database for p in committed] == names

    catalog = await load_catalog(store, ZONE)  # all that zone 2 knows: the bucket
    plan = plan_restore(catalog, names, None)
    assert [(r.database, r.key, r.sha256) for r in plan.dumps] == [
        (p.database, p.key, p.sha256) for p in committed
    ]
    seen: list[RestoreProgress] = []
    results = await restore_databases(plan, pg_dumper(zone2, clock), store, seen.append)
    assert [(p.database, p.phase, p.index, p.total) for p in seen] == [
        (names[0], "restoring", 0, 2),
        (names[0], "restored", 0, 2),
        (names[1], "restoring", 1, 2),
        (names[1], "restored", 1, 2),
    ]
    assert [(r.database, r.rows, r.sha256) for r in results] == [
        (p.database, ROWS, p.sha256) for p in committed
    ]
    for name in names:
        async with connect(zone1, name) as source, connect(zone2, name) as restored:
            assert await snapshot(restored) == await snapshot(source)
            for conn in (source, restored):  # both continue from the same point
                await conn.execute(
                    "INSERT INTO public.alerts (rule, severity) VALUES ('n', 'info')"
                )
            query = "SELECT id, ticket FROM public.alerts WHERE rule = 'n'"
            assert tuple(await restored.fetchrow(query) or ()) == (1501, 1000 + 5 * 1500)
            assert await restored.fetchrow(query) == await source.fetchrow(query)


async def _set_marker(server: PostgresServer, database: str, value: int) -> None:
    async with connect(server, database) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS marker (v int)")
        await conn.execute("DELETE FROM marker")
        await conn.execute("INSERT INTO marker VALUES ($1)", value)


async def test_point_in_time_picks_the_dump_committed_at_or_before(
    zone1: PostgresServer, zone2: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await seeded(zone1, dbname)
    store = FileObjectStore(tmp_path / "bucket")
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    loop = backup_loop(zone1, clock, metrics, [dbname])
    session = await lead(store, clock, metrics)
    seqs, times = [], []
    async with running(loop, session):
        for value in (1, 2, 3):
            await _set_marker(zone1, dbname, value)
            [record] = await loop.dump_now(f"test {value}")
            seqs.append(record.seq)
            times.append(record.committed_at)
            clock.advance(600)
    assert times == sorted(set(times))

    catalog = await load_catalog(store, ZONE)
    for latest, expected in [
        (times[1] + timedelta(minutes=5), seqs[1]),
        (times[1], seqs[1]),  # "at or before"
        (times[2] - timedelta(seconds=1), seqs[1]),
        (None, seqs[2]),
    ]:
        assert [r.seq for r in plan_restore(catalog, [dbname], latest).dumps] == [expected]
    plan = plan_restore(catalog, [dbname], times[1] + timedelta(minutes=5))
    await restore_databases(plan, pg_dumper(zone2, clock), store)
    async with connect(zone2, dbname) as conn:
        assert await conn.fetchval("SELECT v FROM marker") == 2

    too_early = times[0] - timedelta(seconds=1)
    with pytest.raises(NoBackup, match=dbname) as caught:
        plan_restore(catalog, [dbname, "other_db"], too_early)
    assert caught.value.databases == [dbname, "other_db"]
    assert too_early.isoformat() in str(caught.value)


async def test_corrupt_dump_is_refused_before_anything_changes(
    zone1: PostgresServer, zone2: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await seeded(zone1, dbname, 1)
    await seeded(zone2, dbname, 2)  # zone 2 holds other contents that must survive
    store = FileObjectStore(tmp_path / "bucket")
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    loop = backup_loop(zone1, clock, metrics, [dbname])
    async with running(loop, await lead(store, clock, metrics)):
        [record] = await loop.dump_now("test")
    flip_byte(tmp_path / "bucket", record.key)
    async with connect(zone2, dbname) as conn:
        before = await snapshot(conn)

    plan = plan_restore(await load_catalog(store, ZONE), [dbname], None)
    with pytest.raises(RestoreFailed, match=dbname) as caught:
        await restore_databases(plan, pg_dumper(zone2, clock), store, metrics=metrics)
    assert caught.value.corrupt
    assert isinstance(caught.value.__cause__, CorruptObject)
    async with connect(zone2, dbname) as conn:
        assert await snapshot(conn) == before
    assert not await scratch_databases(zone2)
    labels = {"kind": "postgres", "reason": "corrupt"}
    assert metrics.registry.get_sample_value("az_agent_restore_failures_total", labels) == 1
