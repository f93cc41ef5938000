"""Both zones' health in ``/status``: zone 1's leader publishes, zone 2 (the standby) measures
its own zone and reads zone 1's record, and sees zone 1 turn unhealthy when its broker dies."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import Zone, leads, prometheus, status_of, wait_for

BROKER = "Broker_127.0.0.1_8099"


async def _peer(zone: Zone) -> dict[str, Any] | None:
    peer: dict[str, Any] | None = (await status_of(zone.url))["health"]["peer"]
    return peer


async def test_each_zone_sees_itself_and_the_standby_sees_the_primary(
    stack: tuple[Zone, Zone],
) -> None:
    one, two = stack
    await one.start()
    await two.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    peer = await wait_for(lambda: _peer(two), "zone 2 to read zone 1's health")
    assert peer["zone"] == "az1"
    assert peer["status"] == "healthy", peer
    assert sorted(peer["checks"]) == [
        "ingestion",
        "pinot-brokers",
        "pinot-controller",
        "pinot-servers",
        "postgres",
    ]

    primary = (await status_of(one.url))["health"]
    assert primary["published"] is True
    assert primary["zone"]["holder"] == (await status_of(one.url))["holder"]
    # Zone 1 names no peer (no automatic failover, never taken over): it shows none.
    assert (primary["peerZone"], primary["peer"]) == (None, None)
    standby = (await status_of(two.url))["health"]
    assert standby["published"] is True, "a standby zone's replicas publish it by CAS"
    assert standby["peerZone"] == "az1"
    assert standby["zone"]["zone"] == "az2"
    assert standby["zone"]["checks"]["pinot-controller"]["ok"] is True

    one.pinot.cluster.helix.instances[BROKER].live = False

    async def sick() -> dict[str, Any] | None:
        seen = await _peer(two)
        return seen if seen is not None and seen["status"] == "unhealthy" else None

    seen = await wait_for(sick, "zone 2 to see zone 1 unhealthy", within=30)
    assert not seen["checks"]["pinot-brokers"]["ok"]
    assert seen["sequence"] > peer["sequence"]
    metrics = await prometheus(two)
    assert metrics['az_agent_zone_health{check="pinot-brokers",zone="az1"}'] == 0
    assert metrics['az_agent_zone_health{check="pinot-controller",zone="az2"}'] == 1
