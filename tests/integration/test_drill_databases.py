"""The drill's database comparison finds what differs between two servers (rows, contents,
tables), so its "identical" verdict means something."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from az_agent.sandbox.drill import compare_database, create_sample_databases
from az_agent.sandbox.postgres import PASSWORD, PostgresServer

DB = "configdb"


@pytest.fixture(scope="module")
async def two_servers() -> AsyncIterator[tuple[PostgresServer, PostgresServer]]:
    servers = (PostgresServer("drill-cmp-1"), PostgresServer("drill-cmp-2"))
    try:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
        for server in servers:
            await create_sample_databases(server, 30)
            await _sql(server, "UPDATE dashboards SET created = '2020-01-01T00:00:00Z'")
            await _sql(server, "UPDATE alert_rules SET created = '2020-01-01T00:00:00Z'")
        yield servers
    finally:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in servers))


async def _sql(server: PostgresServer, sql: str) -> None:
    conn = await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, password=PASSWORD, database=DB
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_identical_then_each_kind_of_difference(
    two_servers: tuple[PostgresServer, PostgresServer],
) -> None:
    old, new = two_servers
    check = await compare_database(old, new, DB)
    assert check.identical, check.differences
    assert (check.tables, check.rows) == (2, 60)

    await _sql(new, "UPDATE dashboards SET title = 'changed' WHERE id = 7")
    check = await compare_database(old, new, DB)
    assert not check.identical
    assert check.differences == [
        "table dashboards: 30 rows in the old zone, 30 in the new, contents differ"
    ]

    await _sql(new, "DROP TABLE alert_rules")
    await _sql(old, "DELETE FROM dashboards WHERE id > 20")
    check = await compare_database(old, new, DB)
    assert check.differences == [
        "table alert_rules missing in the new zone",
        "table dashboards: 20 rows in the old zone, 30 in the new, contents differ",
    ]
