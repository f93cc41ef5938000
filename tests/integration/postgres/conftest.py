"""Two real PostgreSQL servers, one per zone, started once per session, and helpers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from az_agent.drivers.postgres.dumper import PgDumper
from az_agent.drivers.storage.file import FileObjectStore
from tests.integration.postgres.helpers import dumper_for
from tests.servers.postgres import PostgresServer


@pytest.fixture(scope="session")
async def pg_servers() -> AsyncIterator[tuple[PostgresServer, PostgresServer]]:
    """Zone 1 and zone 2, started side by side in threads (initdb + start is ~1 s each)."""
    servers = (PostgresServer("pg-az1"), PostgresServer("pg-az2"))
    try:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
        yield servers
    finally:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in servers))


@pytest.fixture
def zone1(pg_servers: tuple[PostgresServer, PostgresServer]) -> PostgresServer:
    return pg_servers[0]


@pytest.fixture
def zone2(pg_servers: tuple[PostgresServer, PostgresServer]) -> PostgresServer:
    return pg_servers[1]


@pytest.fixture
def dumper1(zone1: PostgresServer) -> PgDumper:
    return dumper_for(zone1)


@pytest.fixture
def dumper2(zone2: PostgresServer) -> PgDumper:
    return dumper_for(zone2)


@pytest.fixture
def file_store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "bucket")


@pytest.fixture
def dbname() -> str:
    """A database name no other test uses."""
    return f"db_{uuid.uuid4().hex[:10]}"
