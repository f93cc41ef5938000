"""Dumps that fail leave no committed object and no child process, and the next one succeeds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr

from az_agent.drivers.errors import NotFound, Unavailable
from az_agent.drivers.postgres.base import ToolFailed
from az_agent.drivers.postgres.dumper import PgDumper
from az_agent.drivers.storage.file import FileObjectStore
from tests.integration.postgres.helpers import (
    big_database,
    children_named,
    connect,
    dumper_for,
    fake_tool,
    seeded,
    wait_for_log,
)
from tests.integration.postgres.stores import FailingStore, StallingStore
from tests.servers.postgres import PostgresServer

_CLIENT_LOST = "FATAL:  connection to client lost"


async def test_cancelled_dump_kills_and_reaps_pg_dump(
    zone1: PostgresServer, file_store: FileObjectStore, dbname: str
) -> None:
    await big_database(zone1, dbname)
    dumper = dumper_for(zone1, dump_compression=0)
    store = StallingStore(file_store)
    task = asyncio.create_task(dumper.dump(dbname, store, "k/dump"))
    await asyncio.wait_for(store.receiving.wait(), 10)
    [pid] = list(children_named("pg_dump"))
    lost = await wait_for_log(zone1, _CLIENT_LOST, 0, within=0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # pg_dump died in the middle of its COPY (not drained to its end): the server saw it go.
    assert await wait_for_log(zone1, _CLIENT_LOST, lost + 1) == lost + 1
    assert not list(children_named("pg_dump"))
    assert not await asyncio.to_thread(Path(f"/proc/{pid}").exists)  # reaped, not a zombie
    assert [info async for info in file_store.list()] == []
    result = await dumper.dump(dbname, file_store, "k/dump")
    assert (await file_store.head("k/dump")).sha256 == result.sha256


async def test_upload_error_is_raised_and_pg_dump_reaped(
    zone1: PostgresServer, file_store: FileObjectStore, dbname: str
) -> None:
    await big_database(zone1, dbname)
    dumper = dumper_for(zone1, dump_compression=0)
    with pytest.raises(Unavailable, match="injected"):
        await dumper.dump(dbname, FailingStore(file_store), "k/dump")
    assert not list(children_named("pg_dump"))
    assert [info async for info in file_store.list()] == []
    assert (await dumper.dump(dbname, file_store, "k/dump")).size > 8_000_000


async def test_pg_dump_error_surfaces_its_stderr_and_commits_nothing(
    zone1: PostgresServer, file_store: FileObjectStore, dbname: str
) -> None:
    await seeded(zone1, dbname)
    async with connect(zone1, dbname) as conn:
        await conn.execute("DROP ROLE IF EXISTS az_reader")
        await conn.execute("CREATE ROLE az_reader LOGIN PASSWORD 'reader-pw'")
        await conn.execute("GRANT USAGE ON SCHEMA app TO az_reader")
        await conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO az_reader")
    settings = zone1.settings(user="az_reader")
    dumper = PgDumper(settings, SecretStr("reader-pw"))
    with pytest.raises(ToolFailed, match="permission denied for table") as caught:
        await dumper.dump(dbname, file_store, "k/dump")
    assert caught.value.returncode == 1
    assert "pg_dump" in str(caught.value)
    assert "reader-pw" not in str(caught.value)
    assert [info async for info in file_store.list()] == []
    assert not list(children_named("pg_dump"))


async def test_crashing_pg_dump_leaves_no_object(
    zone1: PostgresServer, file_store: FileObjectStore, dbname: str, tmp_path: Path
) -> None:
    await seeded(zone1, dbname)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    version = 'case "$1" in --version) echo "pg_dump (PostgreSQL) 15.18"; exit 0;; esac\n'
    fake_tool(bin_dir, "pg_dump", version + "head -c 3000000 /dev/zero\nkill -SEGV $$\n")
    fake_tool(bin_dir, "pg_restore", version.replace("pg_dump", "pg_restore"))
    dumper = dumper_for(zone1, bin_dir=str(bin_dir))
    with pytest.raises(ToolFailed, match="killed by SIGSEGV"):
        await dumper.dump(dbname, file_store, "k/dump")
    assert [info async for info in file_store.list()] == []
    assert not list(children_named("pg_dump"))


async def test_dump_of_a_missing_database_is_not_found(
    dumper1: PgDumper, file_store: FileObjectStore
) -> None:
    with pytest.raises(NotFound, match="no_such_db"):
        await dumper1.dump("no_such_db", file_store, "k/dump")
    assert [info async for info in file_store.list()] == []
