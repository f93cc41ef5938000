"""Warm standby: dumps committed in zone 1 followed into shadow databases of zone 2, which an
activation swaps in instead of restoring (also after a restart in the middle of the swap)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.restore.postgres import (
    RestoreProgress,
    find_shadows,
    plan_restore,
    restore_databases,
)
from az_agent.agent.standby.shadow import ShadowsBehind, follow_dumps
from az_agent.drivers.errors import CorruptObject
from az_agent.drivers.postgres.base import RestoreResult
from az_agent.drivers.postgres.dumper import PgDumper, shadow_name
from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import Catalog, DumpRecord, load_catalog
from tests.fakeclock import FakeClock
from tests.integration.agent_postgres.helpers import ZONE, backup_loop, lead, running
from tests.integration.postgres.helpers import (
    big_database,
    connect,
    database_names,
    flip_byte,
    scratch_databases,
    seeded,
)
from tests.integration.postgres.schema import ROWS, snapshot
from tests.servers.postgres import PostgresServer

log = logging.getLogger(__name__)

Dump = Callable[[], Awaitable[list[DumpRecord]]]


class CountingDumper(PgDumper):
    """Counts the restores it starts, of a shadow or a live database (each one a pg_restore)."""

    restores = 0

    async def restore(self, *args: Any, **kwargs: Any) -> RestoreResult:
        self.restores += 1
        return await super().restore(*args, **kwargs)

    async def restore_shadow(self, *args: Any, **kwargs: Any) -> RestoreResult:
        self.restores += 1
        return await super().restore_shadow(*args, **kwargs)


class Crash(BaseException):
    """The process dying at a chosen point: nothing after it runs, no clean-up handler either."""


class DiesAfterTheSwap(CountingDumper):
    """Dies once the swap has committed, before the old live database is dropped."""

    async def _sweep(self, *args: Any, **kwargs: Any) -> None:
        raise Crash


def dumper(server: PostgresServer, kind: type[PgDumper] = CountingDumper) -> Any:
    return kind(server.settings(), SecretStr(server.password))


@asynccontextmanager
async def zone1_backups(
    server: PostgresServer, store: ObjectStore, databases: list[str]
) -> AsyncIterator[Dump]:
    """Zone 1 leading and backing up ``databases``; yields "dump them all now"."""
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    loop = backup_loop(server, clock, metrics, databases)
    async with running(loop, await lead(store, clock, metrics)):

        async def dump() -> list[DumpRecord]:
            records = await loop.dump_now("test")
            clock.advance(60)
            return records

        yield dump


@pytest.fixture(autouse=True)
async def drop_shadows(zone2: PostgresServer, dbname: str) -> AsyncIterator[None]:
    """Shadows outlive a test by design; the driver tests of this session count every
    ``__az_`` database of the server as a leftover, so drop this test's."""
    yield
    async with connect(zone2) as admin:
        for name in await scratch_databases(zone2):
            if name.startswith(dbname):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def set_marker(server: PostgresServer, database: str, value: int) -> None:
    async with connect(server, database) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS public.marker (v int)")
        await conn.execute("DELETE FROM public.marker")
        await conn.execute("INSERT INTO public.marker VALUES ($1)", value)


async def oid_of(server: PostgresServer, name: str) -> int | None:
    """A database's OID: a restore makes a new database, so an unchanged OID means none ran."""
    async with connect(server) as conn:
        value = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", name)
        return None if value is None else int(value)


async def snapshot_of_shadow(server: PostgresServer, database: str) -> dict[str, Any]:
    """The shadow's contents (it refuses connections: opened for the look, closed again)."""
    name = shadow_name(database)
    async with connect(server) as admin:
        assert not await admin.fetchval(
            "SELECT datallowconn FROM pg_database WHERE datname = $1", name
        ), "a shadow must refuse connections"
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        try:
            async with connect(server, name) as conn:
                return await snapshot(conn)
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')


async def catalog_of(store: ObjectStore) -> Catalog:
    return await load_catalog(store, ZONE)  # all that zone 2 knows: the bucket


async def test_follow_restores_the_newest_dump_into_a_labelled_shadow_once(
    zone1: PostgresServer, zone2: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await seeded(zone1, dbname)
    store = FileObjectStore(tmp_path / "bucket")
    standby = dumper(zone2)
    async with zone1_backups(zone1, store, [dbname]) as dump:
        await set_marker(zone1, dbname, 1)
        [first] = await dump()
        assert await follow_dumps(standby, store, await catalog_of(store), [dbname]) == {
            dbname: first.key
        }
        assert standby.restores == 1
        label = await standby.shadow(dbname)
        assert label is not None
        assert (label.key, label.sha256, label.size) == (first.key, first.sha256, first.size)
        assert (label.rows, label.rows_exact) == (ROWS + 1, True)
        async with connect(zone1, dbname) as source:
            assert await snapshot_of_shadow(zone2, dbname) == await snapshot(source)
        assert dbname not in await database_names(zone2)  # the live database is not touched

        # Nothing newer: the label answers, no restore (the shadow is the same database).
        oid = await oid_of(zone2, shadow_name(dbname))
        restarted = dumper(zone2)  # a restarted agent reads the label from PostgreSQL
        assert await follow_dumps(restarted, store, await catalog_of(store), [dbname]) == {
            dbname: first.key
        }
        assert restarted.restores == 0
        assert await oid_of(zone2, shadow_name(dbname)) == oid

        # A newer dump replaces the shadow, leaving nothing else behind.
        await set_marker(zone1, dbname, 2)
        [second] = await dump()
        assert await follow_dumps(restarted, store, await catalog_of(store), [dbname]) == {
            dbname: second.key
        }
        assert restarted.restores == 1
        assert await oid_of(zone2, shadow_name(dbname)) != oid
        label = await restarted.shadow(dbname)
        assert label is not None
        assert label.holds(second.key, second.sha256)
        shadow = await snapshot_of_shadow(zone2, dbname)
        assert shadow["rows"]["marker"] == [(2,)]
    assert {n for n in await scratch_databases(zone2) if dbname in n} == {shadow_name(dbname)}

    # No live database yet: the shadow simply takes its name.
    plan = plan_restore(await catalog_of(store), [dbname], None)
    [result] = await restore_databases(plan, restarted, store, swap_tag="op-1")
    assert (result.shadow, result.replaced_existing, restarted.restores) == (True, False, 1)
    async with connect(zone1, dbname) as source, connect(zone2, dbname) as live:
        assert await snapshot(live) == await snapshot(source)
    assert {n for n in await scratch_databases(zone2) if dbname in n} == set()


async def test_a_failed_restore_never_labels_a_shadow_with_its_dump(
    zone1: PostgresServer, zone2: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    other = f"{dbname}_b"
    await seeded(zone1, dbname)
    await seeded(zone1, other)
    store = FileObjectStore(tmp_path / "bucket")
    standby = dumper(zone2)
    async with zone1_backups(zone1, store, [dbname, other]) as dump:
        first, _ = await dump()
        await set_marker(zone1, dbname, 2)
        second, other_second = await dump()
    # The last byte: pg_restore may well succeed, the checksum still refuses the dump.
    flip_byte(tmp_path / "bucket", second.key, from_end=0)

    # No shadow yet and a corrupt newest dump: no shadow at all; the other database goes on.
    catalog = await catalog_of(store)
    with pytest.raises(ShadowsBehind) as caught:
        await follow_dumps(standby, store, catalog, [dbname, other])
    assert caught.value.held == {other: other_second.key}
    assert isinstance(caught.value.failures[dbname], CorruptObject)
    assert await standby.shadow(dbname) is None
    assert shadow_name(dbname) not in await database_names(zone2)
    assert not await leftovers(zone2, dbname)

    # A good shadow, then a newer dump that fails: the shadow keeps its own (older) label.
    await standby.restore_shadow(dbname, store, first.key, first.sha256, first.size)
    with pytest.raises(ShadowsBehind) as caught:
        await follow_dumps(standby, store, catalog, [dbname])
    assert caught.value.held == {dbname: first.key}
    label = await standby.shadow(dbname)
    assert label is not None
    assert label.holds(first.key, first.sha256)
    assert "marker" not in (await snapshot_of_shadow(zone2, dbname))["rows"]
    assert not await leftovers(zone2, dbname)


async def leftovers(server: PostgresServer, database: str) -> set[str]:
    """Scratch and aside databases of ``database`` (its shadow is not one)."""
    return {
        name
        for name in await scratch_databases(server)
        if name.startswith((f"{database}__az_restore_", f"{database}__az_old_"))
        or name.startswith((f"{shadow_name(database)}__az_restore_",))
        or name.startswith((f"{shadow_name(database)}__az_old_",))
    }


async def test_activation_swaps_the_shadow_in_instead_of_restoring(
    zone1: PostgresServer, zone2: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await seeded(zone1, dbname)
    await seeded(zone2, dbname, 2)  # zone 2's own, different contents, in use
    store = FileObjectStore(tmp_path / "bucket")
    standby = dumper(zone2)
    async with zone1_backups(zone1, store, [dbname]) as dump:
        [record] = await dump()
    catalog = await catalog_of(store)
    await follow_dumps(standby, store, catalog, [dbname])
    plan = plan_restore(catalog, [dbname], None)
    assert plan.describe()["via"] == {dbname: "restore"}
    plan = await find_shadows(plan, standby)  # what dryRun shows
    assert plan.describe()["via"] == {dbname: "shadow"}

    async with connect(zone2, dbname) as session:  # ended by the swap, as by a restore
        seen: list[RestoreProgress] = []
        [result] = await restore_databases(plan, standby, store, seen.append, swap_tag="activate-1")
        assert session.is_closed() or not await _alive(session)
    assert (result.shadow, result.key, result.rows, result.replaced_existing) == (
        True,
        record.key,
        ROWS,
        True,
    )
    assert [p.phase for p in seen] == ["restoring", "swapped"]
    assert standby.restores == 1  # the follow step's, none by the activation
    async with connect(zone1, dbname) as source, connect(zone2, dbname) as live:
        assert await snapshot(live) == await snapshot(source)
        await live.execute("INSERT INTO public.alerts (rule, severity) VALUES ('n', 'info')")
    assert await standby.shadow(dbname) is None
    assert {n for n in await scratch_databases(zone2) if dbname in n} == set()

    # Another operation with the same plan does not trust the first one's tag: the live
    # database was written to since, so it is restored from the bucket.
    [again] = await restore_databases(plan, standby, store, swap_tag="activate-2")
    assert not again.shadow
    assert standby.restores == 2
    async with connect(zone1, dbname) as source, connect(zone2, dbname) as live:
        assert await snapshot(live) == await snapshot(source)


async def test_a_shadow_of_an_older_dump_is_restored_over_not_swapped_in(
    zone1: PostgresServer, zone2: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await seeded(zone1, dbname)
    store = FileObjectStore(tmp_path / "bucket")
    standby = dumper(zone2)
    async with zone1_backups(zone1, store, [dbname]) as dump:
        await dump()
        await follow_dumps(standby, store, await catalog_of(store), [dbname])
        await set_marker(zone1, dbname, 7)
        await dump()  # arrived after the last follow step
    plan = await find_shadows(plan_restore(await catalog_of(store), [dbname], None), standby)
    assert plan.describe()["via"] == {dbname: "restore"}
    [result] = await restore_databases(plan, standby, store, swap_tag="op-1")
    assert not result.shadow
    assert standby.restores == 2
    async with connect(zone2, dbname) as live:
        assert await live.fetchval("SELECT v FROM public.marker") == 7
    assert await standby.shadow(dbname) is not None  # left for the next follow step


async def _alive(conn: Any) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except Exception:
        return False
    return True


async def test_a_restart_in_the_middle_of_the_swap_ends_with_the_dump_live(
    zone1: PostgresServer, zone2: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await seeded(zone1, dbname)
    await seeded(zone2, dbname, 2)
    store = FileObjectStore(tmp_path / "bucket")
    async with zone1_backups(zone1, store, [dbname]) as dump:
        await dump()
    catalog = await catalog_of(store)
    plan = plan_restore(catalog, [dbname], None)

    # Died before the renames committed, the live database already closed to connections.
    await follow_dumps(dumper(zone2), store, catalog, [dbname])
    async with connect(zone2) as admin:
        await admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
    resumed = dumper(zone2)
    [result] = await restore_databases(plan, resumed, store, swap_tag="op-1")
    assert result.shadow
    assert resumed.restores == 0
    async with connect(zone1, dbname) as source, connect(zone2, dbname) as live:
        assert await snapshot(live) == await snapshot(source)  # and it accepts connections

    # Died after the renames committed, before the old database was dropped.
    await seeded(zone2, dbname + "x")  # unrelated, must survive the clean-up
    await follow_dumps(dumper(zone2), store, catalog, [dbname])
    with pytest.raises(Crash):
        await restore_databases(plan, dumper(zone2, DiesAfterTheSwap), store, swap_tag="op-2")
    assert await leftovers(zone2, dbname)
    live_oid = await oid_of(zone2, dbname)
    resumed = dumper(zone2)
    [result] = await restore_databases(plan, resumed, store, swap_tag="op-2")
    assert result.shadow
    assert resumed.restores == 0
    assert await oid_of(zone2, dbname) == live_oid  # recognised as done, nothing moved
    async with connect(zone1, dbname) as source, connect(zone2, dbname) as live:
        assert await snapshot(live) == await snapshot(source)
    assert {n for n in await scratch_databases(zone2) if dbname in n} == set()
    assert dbname + "x" in await database_names(zone2)


async def test_swap_in_of_a_larger_dump_against_a_restore(
    zone1: PostgresServer,
    zone2: PostgresServer,
    tmp_path: Path,
    dbname: str,
    record_property: Callable[[str, object], None],
) -> None:
    """Reports the figures; no timed assertion (2 shared cores)."""
    await big_database(zone1, dbname)
    store = FileObjectStore(tmp_path / "bucket")
    async with zone1_backups(zone1, store, [dbname]) as dump:
        [record] = await dump()
    catalog = await catalog_of(store)
    plan = plan_restore(catalog, [dbname], None)
    standby = dumper(zone2)

    began = time.perf_counter()
    [restored] = await restore_databases(plan, standby, store)
    restore_seconds = time.perf_counter() - began
    await follow_dumps(standby, store, catalog, [dbname])
    began = time.perf_counter()
    [swapped] = await restore_databases(plan, standby, store, swap_tag="op-big")
    swap_seconds = time.perf_counter() - began
    assert not restored.shadow
    assert swapped.shadow
    assert swapped.rows == restored.rows == 120000
    async with connect(zone1, dbname) as source, connect(zone2, dbname) as live:
        query = "SELECT count(*), md5(string_agg(a, ',' ORDER BY g)) FROM blob"
        assert tuple(await live.fetchrow(query) or ()) == tuple(await source.fetchrow(query) or ())
    figure = (
        f"{record.size / 1e6:.1f} MB dump: restore {restore_seconds:.2f}s, "
        f"swap-in {swap_seconds:.3f}s"
    )
    record_property("swap_in_vs_restore", figure)
    log.warning("%s", figure)  # shown in pytest's summary of the test's log
