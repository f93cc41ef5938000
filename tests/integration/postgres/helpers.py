"""Helpers of the PostgreSQL integration tests: admin connections, corruption, child census."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from az_agent.drivers.postgres.dumper import PgDumper
from tests.integration.postgres.schema import seed
from tests.servers.postgres import PostgresServer


def dumper_for(server: PostgresServer, **overrides: object) -> PgDumper:
    return PgDumper(server.settings(**overrides), SecretStr(server.password))


@asynccontextmanager
async def connect(
    server: PostgresServer, database: str = "postgres"
) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=database,
    )
    try:
        yield conn
    finally:
        await conn.close()


async def create_db(server: PostgresServer, name: str) -> None:
    async with connect(server) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')


async def database_names(server: PostgresServer) -> set[str]:
    async with connect(server) as conn:
        return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}


def flip_byte(store_root: Path, key: str, from_end: int | None = None) -> None:
    """Corrupt a stored object behind the store's back, as bit rot would: same file, same size,
    same mtime, so its sidecar (and so its recorded checksum) still describes it. The middle
    byte, or the one ``from_end`` before the end.
    """
    path = store_root / key
    before = path.stat()
    raw = bytearray(path.read_bytes())
    position = len(raw) // 2 if from_end is None else len(raw) - 1 - from_end
    raw[position] ^= 0xFF
    with path.open("r+b") as handle:
        handle.write(bytes(raw))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def children_named(*names: str) -> Iterator[int]:
    """PIDs of this process's children (zombies included) running one of ``names``."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = stat[stat.rindex(")") + 2 :].split()[1]
        if ppid == me and comm in names:
            yield int(entry.name)


async def wait_for_log(server: PostgresServer, text: str, count: int, within: float = 5.0) -> int:
    """How often ``text`` is in the server's log once it reaches ``count`` (or time runs out)."""
    log = server.directory / "server.log"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        found = (await asyncio.to_thread(log.read_text, errors="replace")).count(text)
        if found >= count or loop.time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def big_database(server: PostgresServer, name: str) -> None:
    """About 8 MB of incompressible rows: more than the pipes between the tools and us hold."""
    await create_db(server, name)
    async with connect(server, name) as conn:
        await conn.execute(
            "CREATE TABLE blob AS SELECT g, md5(g::text) || md5((g * 7)::text) AS a "
            "FROM generate_series(1, 120000) g"
        )


def fake_tool(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


async def seeded(server: PostgresServer, name: str, variant: int = 1) -> None:
    await create_db(server, name)
    async with connect(server, name) as conn:
        await seed(conn, variant)


async def scratch_databases(server: PostgresServer) -> set[str]:
    return {name for name in await database_names(server) if "__az_" in name}
