"""``check()`` refuses a broken set-up with one line a human can act on, never the password."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from az_agent.drivers.errors import DriverError, Misconfigured, Unavailable
from az_agent.drivers.postgres.dumper import PgDumper
from tests.integration.postgres.helpers import connect, dumper_for
from tests.servers.postgres import PostgresServer, free_port


async def _refusal(dumper: PgDumper, *kinds: type[DriverError]) -> str:
    with pytest.raises(kinds) as caught:
        await dumper.check()
    message = str(caught.value)
    assert "\n" not in message
    return message


async def test_check_reports_the_versions(dumper1: PgDumper) -> None:
    versions = await dumper1.check()
    assert versions.server.major == (15,)
    assert versions.pg_dump.major == (15,)
    assert versions.pg_restore.major == (15,)
    assert versions.server.num >= 150000
    await dumper1.ping()


async def test_missing_tools(zone1: PostgresServer, tmp_path: Path) -> None:
    message = await _refusal(dumper_for(zone1, bin_dir=str(tmp_path / "nope")), Misconfigured)
    assert message == f"pg_dump not found in postgres.binDir {tmp_path / 'nope'}"


async def test_tools_older_than_the_server(zone1: PostgresServer, tmp_path: Path) -> None:
    for tool in ("pg_dump", "pg_restore"):
        path = tmp_path / tool
        path.write_text(f'#!/bin/sh\necho "{tool} (PostgreSQL) 12.3"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    message = await _refusal(dumper_for(zone1, bin_dir=str(tmp_path)), Misconfigured)
    assert message.startswith("pg_dump 12.3 ")
    assert "older than the PostgreSQL 15." in message
    assert "install client tools >= 15" in message


async def test_nothing_listening(zone1: PostgresServer) -> None:
    dumper = dumper_for(zone1, port=free_port())
    message = await _refusal(dumper, Misconfigured, Unavailable)
    assert "cannot reach the server" in message
    with pytest.raises(Unavailable):
        await dumper.ping()


async def test_wrong_password(zone1: PostgresServer) -> None:
    dumper = PgDumper(zone1.settings(), SecretStr("wrong-horse-battery"))
    message = await _refusal(dumper, Misconfigured)
    assert "password authentication failed" in message
    assert "wrong-horse-battery" not in message
    assert zone1.password not in message


async def test_role_that_cannot_create_databases(zone1: PostgresServer) -> None:
    async with connect(zone1) as admin:
        await admin.execute("DROP ROLE IF EXISTS az_weak")
        await admin.execute("CREATE ROLE az_weak LOGIN PASSWORD 'weak-pw' NOCREATEDB")
    dumper = PgDumper(zone1.settings(user="az_weak"), SecretStr("weak-pw"))
    message = await _refusal(dumper, Misconfigured)
    assert "may not create databases" in message
