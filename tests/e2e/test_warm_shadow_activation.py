"""A warm standby's shadow databases, swapped in by a real activation.

Zone 2 follows zone 1's dumps into shadows (as its warm follow loop does each step); the
dry run says the databases would be swapped in, and the activation's ``restore-postgres`` phase
swaps them in instead of restoring: the live databases end equal to zone 1's, no shadow is left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from az_agent.agent.standby.shadow import follow_dumps
from az_agent.drivers.postgres.dumper import shadow_name
from az_agent.state import load_catalog
from tests.e2e.conftest import (
    DATABASES,
    Zone,
    activation_done,
    call,
    dumped,
    leads,
    table_rows,
    wait_for,
)
from tests.servers.postgres import PASSWORD, PostgresServer


async def _databases(server: PostgresServer) -> set[str]:
    conn = await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, password=PASSWORD, database="postgres"
    )
    try:
        return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


@pytest.fixture
async def no_shadows_left(stack: tuple[Zone, Zone]) -> AsyncIterator[None]:
    """The PostgreSQL servers outlive the test; later tests count ``__az_`` databases."""
    yield
    server = stack[1].postgres
    conn = await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, password=PASSWORD, database="postgres"
    )
    try:
        for db in DATABASES:
            await conn.execute(f'DROP DATABASE IF EXISTS "{shadow_name(db)}" WITH (FORCE)')
    finally:
        await conn.close()


async def test_activation_swaps_in_the_shadows_a_warm_standby_followed(
    stack: tuple[Zone, Zone], no_shadows_left: None
) -> None:
    one, two = stack
    await one.start()
    await two.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await wait_for(lambda: dumped(one), "zone 1 to dump its databases")
    paused = await call("POST", f"{one.url}/pause", expect=200)  # with its final dump
    assert paused["state"] == "PAUSED"

    assert two.agent is not None
    deps = two.agent.deps
    assert deps.dumper is not None
    catalog = await load_catalog(deps.store, one.name)
    newest = [catalog.newest_dump(db) for db in DATABASES]
    held = await follow_dumps(deps.dumper, deps.store, catalog, list(DATABASES))
    assert held == {r.database: r.key for r in newest if r is not None}
    assert len(held) == len(DATABASES)

    plan = await call("POST", f"{two.url}/activate?zone={one.name}&dryRun=true", expect=200)
    assert plan["postgres"]["via"] == dict.fromkeys(DATABASES, "shadow")

    await call("POST", f"{two.url}/activate?zone={one.name}", expect=202)
    done: dict[str, Any] = await wait_for(lambda: activation_done(two.url), "zone 2 to activate")
    [phase] = [p for p in done["operation"]["phases"] if p["name"] == "restore-postgres"]
    for db in DATABASES:
        assert f"{db}: swapped in shadow" in phase["detail"], phase
        assert await table_rows(two.postgres, db) == await table_rows(one.postgres, db)
    assert done["operation"]["result"]["postgres"]["via"] == dict.fromkeys(DATABASES, "shadow")
    assert not {name for name in await _databases(two.postgres) if "__az_" in name}
