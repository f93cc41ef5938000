"""Unplanned failover: zone 1 dies without a pause and zone 2 takes its place.

Zone 1's agent runs as ``az-agent run`` in its own process so that it can be SIGKILLed, and its
Pinot goes down with it. Zone 2 may take zone 1 over only once zone 1's lease has expired by
zone 2's own observation, or at once with ``force=true``. What zone 1 backed up must all be in
zone 2 afterwards. Restarted, the old agent must find its zone taken and write nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.pinot.models import TableRef, TableType
from az_agent.emulators.pinot.server import PinotEmulator
from az_agent.state import SegmentRecord, find_tail, load_catalog
from az_agent.state.keys import lease_key
from tests.e2e.conftest import (
    DATABASES,
    REALTIME_TABLE,
    TABLE,
    AgentProcess,
    AgentProcessFactory,
    Zone,
    activation_done,
    bucket_listing,
    call,
    open_bucket,
    status_of,
    table_rows,
    wait_for,
)

REALTIME = TableRef(TABLE, TableType.REALTIME)
COMMITS = 3


async def committed(pinot_url: str) -> dict[str, str]:
    """Segment name -> CRC of the realtime table's committed segments in that Pinot."""
    controller = HttpPinotController(pinot_url)
    try:
        return {s.name: str(s.crc) for s in await controller.backup_ready_segments(REALTIME)}
    finally:
        await controller.close()


async def backed_up_catalog(zone: Zone) -> list[SegmentRecord]:
    """Zone 1's backed-up segments, once its catalog holds every segment its Pinot committed
    and a dump of every database."""
    wanted = set((await committed(zone.pinot.url)).items())
    assert len(wanted) == 2 * COMMITS

    async def complete() -> list[SegmentRecord] | None:
        async with open_bucket(zone.config) as store:
            catalog = await load_catalog(store, zone.name)
        held = {(r.name, r.crc) for r in catalog.segments()}
        dumped = all(catalog.newest_dump(db) is not None for db in DATABASES)
        return catalog.segments() if wanted <= held and dumped else None

    records: list[SegmentRecord] = await wait_for(complete, "zone 1's backups", within=30)
    return records


async def zone_one_dies(one: Zone, agent: AgentProcess) -> tuple[str, list[SegmentRecord]]:
    """Zone 1 leads, backs up fresh segments and dumps, then dies: its agent SIGKILLed, its
    Pinot stopped. The holder id of its live lease, and the segments it backed up."""
    await agent.start()
    leading = await wait_for(lambda: _leads(agent.url), "zone 1 to lead", within=20)
    for _ in range(COMMITS):
        await one.pinot.cluster.commit_consuming(REALTIME_TABLE)
    records = await backed_up_catalog(one)
    await agent.kill()
    await one.pinot.stop()
    return str(leading["holder"]), records


async def _leads(url: str) -> dict[str, Any] | None:
    """The status once the agent holds its lease and its leader session runs (backs up)."""
    body = await status_of(url)
    return body if body["leader"] and body["leading"] else None


async def assert_restored(one: Zone, two: Zone, records: list[SegmentRecord]) -> None:
    """Every segment zone 1 backed up is in zone 2's Pinot with its CRC; databases equal."""
    async with open_bucket(two.config) as store:
        catalog = await load_catalog(store, one.name)
    expected = {r.name: r.crc for r in catalog.segments()}
    assert expected == {r.name: r.crc for r in records}, "the catalog lost nothing at the fence"
    present = await committed(two.pinot.url)
    missing = {name: crc for name, crc in expected.items() if present.get(name) != crc}
    assert not missing, f"backed-up segments missing in zone 2 or with another CRC: {missing}"
    for db in DATABASES:
        assert await table_rows(two.postgres, db) == await table_rows(one.postgres, db), db


async def activate(two: Zone, query: str = "") -> dict[str, Any]:
    return await call("POST", f"{two.url}/activate?zone=az1{query}")


def assert_refused_by_live_lease(body: dict[str, Any], holder: str) -> None:
    assert body["_status"] == 409, body
    assert f"holder {holder}" in body["detail"], body
    assert "is live" in body["detail"], body


async def test_unplanned_failover_once_the_lease_expires(
    stack: tuple[Zone, Zone], agent_processes: AgentProcessFactory
) -> None:
    one, two = stack
    old = agent_processes(one)
    await two.start()
    holder, records = await zone_one_dies(one, old)
    ttl = one.config.service.lease.ttl_seconds

    loop = asyncio.get_running_loop()
    asked_at = loop.time()
    assert_refused_by_live_lease(await activate(two), holder)

    async def accepted() -> dict[str, Any] | None:
        body = await activate(two)
        if body["_status"] == 409:
            assert_refused_by_live_lease(body, holder)
            return None
        assert body["_status"] == 202, body
        return body

    body = await wait_for(accepted, "the activation to be accepted", within=3 * ttl, interval=0.5)
    assert loop.time() - asked_at >= ttl, "accepted before zone 2 saw the lease unchanged a TTL"
    assert body["operation"]["kind"] == "activate"
    done = await wait_for(lambda: activation_done(two.url), "zone 2 to activate", within=60)
    assert done["leader"] is True
    await assert_restored(one, two, records)

    await assert_old_agent_stays_out(one, old)


async def assert_old_agent_stays_out(one: Zone, old: AgentProcess) -> None:
    """Zone 1 comes back (its Pinot with new segments, its agent restarted): the agent finds
    its zone taken over, leads nothing and writes nothing to the bucket."""
    retry = one.config.service.lease.retry_period_seconds
    async with open_bucket(one.config) as store:
        before = await bucket_listing(store)
        tail = await find_tail(store, one.name)
        lease, _ = await store.get(lease_key(one.name))
        port = urlsplit(one.pinot.url).port
        async with PinotEmulator(one.pinot.data_dir, port=port or 0) as pinot:
            await old.start()
            await pinot.cluster.commit_consuming(REALTIME_TABLE)

            async def watched_a_while() -> bool:
                # A few lease periods, as the agent itself measures them (it has read its zone's
                # lease and watched it unchanged), to leave it time to do the wrong thing.
                body = await status_of(old.url)
                assert body["state"] in ("STANDBY", "FENCED"), body
                assert body["leader"] is False, body
                return (body["lease"]["secondsUnchanged"] or 0) >= 4 * retry

            await wait_for(watched_a_while, "the restarted agent to watch its lease a while")
            assert await old.terminate() == 0
        after = await bucket_listing(store)
        assert await find_tail(store, one.name) == tail, "zone 1's log grew"
        assert (await store.get(lease_key(one.name)))[0] == lease, "zone 1's lease was written"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    # The restarted agent is zone 1's standby: it publishes its zone's health, nothing else.
    written = [k for k in changed if not k.startswith("az2/") and k != "az1/health.json"]
    assert written == [], "only active zone 2 writes"


async def test_unplanned_failover_with_force(
    stack: tuple[Zone, Zone], agent_processes: AgentProcessFactory
) -> None:
    one, two = stack
    await two.start()
    holder, records = await zone_one_dies(one, agent_processes(one))
    loop = asyncio.get_running_loop()
    died_at = loop.time()
    assert_refused_by_live_lease(await activate(two), holder)
    body = await activate(two, "&force=true")
    assert body["_status"] == 202, body
    ttl = one.config.service.lease.ttl_seconds
    assert loop.time() - died_at < ttl, "force must not wait for the lease to expire"
    await wait_for(lambda: activation_done(two.url), "zone 2 to activate", within=60)
    await assert_restored(one, two, records)
