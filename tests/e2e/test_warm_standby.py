"""A warm standby end to end: agents built as ``az-agent run`` builds them, over HTTP, on moto
and two real PostgreSQL servers. Zone 2 (``standby.mode: warm``) follows zone 1 by itself:
its Pinot gets the segments with consumption paused, its shadow databases the newest dumps,
``/status`` and ``/metrics`` say it is caught up; the activation after zone 1's pause then moves
no segment and swaps the shadows in instead of restoring.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from az_agent.agent.config import parse_config
from az_agent.drivers.pinot.models import TableRef
from az_agent.drivers.postgres.dumper import shadow_name
from az_agent.state import find_tail
from tests.e2e.conftest import (
    DATABASES,
    REALTIME_TABLE,
    Zone,
    activation_done,
    call,
    dumped,
    leads,
    open_bucket,
    prometheus,
    status_of,
    table_rows,
    wait_for,
)
from tests.servers.postgres import PASSWORD

TABLE = TableRef.parse(REALTIME_TABLE)


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


def warm(zone: Zone) -> None:
    raw = zone.config.model_dump(mode="json", by_alias=True)
    raw["az-service"]["config"]["standby"] = {"mode": "warm", "followIntervalSeconds": 1}
    zone.config = parse_config(raw, environ={})


async def test_a_warm_standby_follows_by_itself_and_activates_with_nothing_left_to_move(
    stack: tuple[Zone, Zone], no_shadows_left: None
) -> None:
    one, two = stack
    warm(two)
    for _ in range(3):
        await one.pinot.cluster.produce_segment(REALTIME_TABLE)
    await one.start()
    await two.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await wait_for(lambda: dumped(one), "zone 1 to dump its databases")

    async def segments_backed_up() -> bool:
        return bool((await status_of(one.url))["backups"]["segments"]["segmentsBackedUp"] >= 3)

    await wait_for(segments_backed_up, "zone 1 to back up its segments")

    async def caught_up() -> dict[str, Any] | None:
        """Zone 2's standby section once it has applied zone 1's whole log."""
        async with open_bucket(one.config) as store:
            tail = await find_tail(store, one.name)
        standby: dict[str, Any] = (await status_of(two.url))["standby"]
        done = standby["followedSeq"] >= tail and standby["following"] == one.name
        return standby if done and standby["lastError"] is None else None

    standby = await wait_for(caught_up, "zone 2 to follow zone 1")
    assert standby["mode"] == "warm"
    assert (standby["behindEntries"], standby["behindSeconds"]) == (0, 0.0), standby
    metrics = await prometheus(two)
    assert metrics["az_agent_standby_behind_entries"] == 0
    assert metrics["az_agent_standby_behind_seconds"] == 0
    async with one.controller() as pinot_one, two.controller() as pinot_two:
        committed = {s.name: s.crc for s in await pinot_one.segments(TABLE) if s.crc is not None}
        local = {s.name: s.crc for s in await pinot_two.segments(TABLE)}
        assert committed.items() <= local.items()
        assert (await pinot_two.pause_status(REALTIME_TABLE)).paused

    await call("POST", f"{one.url}/pause", expect=200)  # its flush and final dump follow too
    await wait_for(caught_up, "zone 2 to follow zone 1's pause")
    await call("POST", f"{two.url}/activate?zone={one.name}", expect=202)
    done: dict[str, Any] = await wait_for(lambda: activation_done(two.url), "zone 2 to activate")
    phases = {p["name"]: p for p in done["operation"]["phases"]}
    assert phases["rehydrate-segments"]["detail"].startswith("0 segments moved"), phases
    for db in DATABASES:
        assert f"{db}: swapped in shadow" in phases["restore-postgres"]["detail"], phases
        assert await table_rows(two.postgres, db) == await table_rows(one.postgres, db)
    async with two.controller() as pinot_two:
        assert not (await pinot_two.pause_status(REALTIME_TABLE)).paused
    assert done["standby"]["following"] is None
    assert "az_agent_standby_behind_entries" not in await prometheus(two)
