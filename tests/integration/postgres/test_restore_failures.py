"""Restores that fail, or are refused, leave the target untouched and no scratch database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from az_agent.drivers.errors import CorruptObject, NotFound
from az_agent.drivers.postgres.base import ToolFailed
from az_agent.drivers.postgres.dumper import PgDumper
from az_agent.drivers.storage.file import FileObjectStore
from tests.integration.postgres.helpers import (
    children_named,
    connect,
    create_db,
    database_names,
    flip_byte,
    scratch_databases,
    seeded,
)
from tests.integration.postgres.schema import snapshot
from tests.integration.postgres.stores import StallingReadStore
from tests.servers.postgres import PostgresServer


@pytest.mark.parametrize("from_end", [None, 0], ids=["middle-byte", "last-byte"])
async def test_corrupt_dump_is_refused_and_target_untouched(
    zone1: PostgresServer,
    zone2: PostgresServer,
    dumper1: PgDumper,
    dumper2: PgDumper,
    file_store: FileObjectStore,
    tmp_path: Path,
    dbname: str,
    from_end: int | None,
) -> None:
    await seeded(zone1, dbname)
    await seeded(zone2, dbname)
    async with connect(zone2, dbname) as conn:
        await conn.execute("DELETE FROM app.panels WHERE id > 100")  # zone 2 differs
        before = await snapshot(conn)
    dump = await dumper1.dump(dbname, file_store, "k/dump")
    flip_byte(tmp_path / "bucket", "k/dump", from_end)
    with pytest.raises(CorruptObject):
        await dumper2.restore(dbname, file_store, "k/dump", dump.sha256, dump.size)
    async with connect(zone2, dbname) as conn:
        assert await snapshot(conn) == before
    assert not await scratch_databases(zone2)
    assert not list(children_named("pg_restore"))


async def test_checksum_disagreeing_with_the_log_is_refused_before_any_change(
    zone1: PostgresServer,
    zone2: PostgresServer,
    dumper1: PgDumper,
    dumper2: PgDumper,
    file_store: FileObjectStore,
    dbname: str,
) -> None:
    await seeded(zone1, dbname)
    dump = await dumper1.dump(dbname, file_store, "k/dump")
    before = await database_names(zone2)
    with pytest.raises(CorruptObject, match="the log"):
        await dumper2.restore(dbname, file_store, "k/dump", "0" * 64, dump.size)
    with pytest.raises(CorruptObject, match="the log"):
        await dumper2.restore(dbname, file_store, "k/dump", dump.sha256, dump.size + 1)
    assert await database_names(zone2) == before


async def test_failing_pg_restore_leaves_target_and_no_scratch(
    zone2: PostgresServer, dumper2: PgDumper, file_store: FileObjectStore, dbname: str
) -> None:
    await seeded(zone2, dbname)
    async with connect(zone2, dbname) as conn:
        before = await snapshot(conn)
    info = await file_store.put("k/not-a-dump", b"PGDMP but not really a dump" * 100)
    assert info.sha256 is not None
    with pytest.raises(ToolFailed, match="pg_restore"):
        await dumper2.restore(dbname, file_store, "k/not-a-dump", info.sha256, info.size)
    async with connect(zone2, dbname) as conn:
        assert await snapshot(conn) == before
    assert not await scratch_databases(zone2)


async def test_restore_of_a_missing_object_is_not_found(
    dumper2: PgDumper, file_store: FileObjectStore, dbname: str
) -> None:
    with pytest.raises(NotFound):
        await dumper2.restore(dbname, file_store, "k/missing", "0" * 64, 1)


async def test_leftovers_of_an_interrupted_restore_are_swept(
    zone1: PostgresServer,
    zone2: PostgresServer,
    dumper1: PgDumper,
    dumper2: PgDumper,
    file_store: FileObjectStore,
    dbname: str,
) -> None:
    await seeded(zone1, dbname)
    await create_db(zone2, f"{dbname}__az_restore_dead0001")
    dump = await dumper1.dump(dbname, file_store, "k/dump")
    await dumper2.restore(dbname, file_store, "k/dump", dump.sha256, dump.size)
    assert not await scratch_databases(zone2)


async def test_cancelled_restore_kills_pg_restore_and_drops_the_scratch(
    zone1: PostgresServer,
    zone2: PostgresServer,
    dumper1: PgDumper,
    dumper2: PgDumper,
    file_store: FileObjectStore,
    dbname: str,
) -> None:
    await seeded(zone1, dbname, 1)
    await seeded(zone2, dbname, 2)
    async with connect(zone2, dbname) as conn:
        before = await snapshot(conn)
    dump = await dumper1.dump(dbname, file_store, "k/dump")
    store = StallingReadStore(file_store)
    task = asyncio.create_task(dumper2.restore(dbname, store, "k/dump", dump.sha256, dump.size))
    await asyncio.wait_for(store.reading.wait(), 10)
    assert len(list(children_named("pg_restore"))) == 1
    assert len(await scratch_databases(zone2)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not list(children_named("pg_restore"))
    assert not await scratch_databases(zone2)
    async with connect(zone2, dbname) as conn:
        assert await snapshot(conn) == before
