"""A running agent watches its zone: as the zone's leader it publishes ``health.json`` every
lease round, ``/status`` shows it, the dependency view comes from the same probe, and a dead
broker turns the published verdict unhealthy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from az_agent.emulators.pinot import PinotEmulator
from az_agent.state import HealthBoard, HealthStatus, ZoneHealth
from tests.integration.agent_operations.conftest import ZONE, Rig, until
from tests.integration.pinot.support import RawHttp
from tests.unit.state.helpers import file_store

BROKER = "Broker_127.0.0.1_8099"


@pytest.fixture
async def rig(tmp_path: Path, emulator: PinotEmulator) -> AsyncIterator[Rig]:
    store = await file_store(tmp_path / "bucket")
    try:
        yield Rig(tmp_path / "bucket", store, emulator)
    finally:
        await store.close()


async def _published(rig: Rig) -> ZoneHealth | None:
    return await HealthBoard(rig.store.inner, "other").read(ZONE)


async def test_the_leader_publishes_each_round(rig: Rig, http: RawHttp) -> None:
    async with rig.running() as agent:
        await until(lambda: agent.health.published, "a publication")
        first = await _published(rig)
        assert first is not None
        assert first.status is HealthStatus.HEALTHY, first
        assert first.holder == agent.holder
        assert sorted(first.checks) == [
            "ingestion",
            "pinot-brokers",
            "pinot-controller",
            "pinot-servers",
        ]
        await until(
            lambda: agent.health.own is not None and agent.health.own.sequence > first.sequence,
            "the next round",
        )
        status = agent.status()
        assert status["health"]["zone"]["status"] == "healthy"
        assert status["health"]["published"] is True
        assert (status["health"]["peerZone"], status["health"]["peer"]) == (None, None)
        assert status["dependencies"]["pinot"] == "ok"

        await http.admin("PUT", f"/instances/{BROKER}?live=false")
        await until(
            lambda: agent.health.own is not None and agent.health.own.failing == ["pinot-brokers"],
            "the dead broker seen",
        )
        published = await _published(rig)
        assert published is not None
        assert published.status is HealthStatus.UNHEALTHY
        assert published.sequence > first.sequence
        sample = agent.deps.metrics.registry.get_sample_value(
            "az_agent_zone_health", {"zone": ZONE, "check": "pinot-brokers"}
        )
        assert sample == 0


async def test_the_dependency_view_follows_the_probe(rig: Rig, http: RawHttp) -> None:
    async with rig.running() as agent:
        await until(lambda: agent.dependencies.get("pinot") == "ok", "pinot probed")
        await http.admin("PUT", "/health?status=STARTING")
        await until(lambda: agent.dependencies.get("pinot") != "ok", "pinot down")
        assert "STARTING" in agent.dependencies["pinot"]
        assert agent.dependencies["bucket"] == "ok", "the other dependencies are kept"
        up = agent.deps.metrics.registry.get_sample_value(
            "az_agent_dependency_up", {"dependency": "pinot"}
        )
        assert up == 0
