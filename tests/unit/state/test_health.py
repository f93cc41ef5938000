"""``<zone>/health.json``: the verdict, sequences that grow across publishers and restarts,
reading another zone's, and what an unreadable record does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from az_agent.state import HealthBoard, HealthCheck, HealthCorrupted, HealthStatus, ZoneHealth
from az_agent.state.health import verdict
from az_agent.state.keys import health_key
from tests.fakeclock import FakeClock
from tests.unit.state.helpers import FaultyStore, file_store

OK = HealthCheck(ok=True, detail="fine")
DOWN = HealthCheck(ok=False, detail="Unavailable: refused")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    opened = await file_store(tmp_path / "bucket")
    yield opened
    await opened.close()


def test_verdict() -> None:
    assert verdict({}) is HealthStatus.UNKNOWN
    assert verdict({"a": OK, "b": OK}) is HealthStatus.HEALTHY
    assert verdict({"a": OK, "b": DOWN}) is HealthStatus.UNHEALTHY


async def test_publish_grows_the_sequence_and_reads_back(store: FaultyStore) -> None:
    clock = FakeClock()
    board = HealthBoard(store, "az1", clock=clock)
    assert await board.read("az1") is None
    first = await board.publish({"pinot-controller": OK}, "az1-agent-a")
    second = await board.publish({"pinot-controller": OK, "postgres": DOWN}, "az1-agent-a")
    assert (first.sequence, second.sequence) == (1, 2)
    assert (first.status, second.status) == (HealthStatus.HEALTHY, HealthStatus.UNHEALTHY)
    assert second.failing == ["postgres"]
    assert second.measured_at == clock.now()
    stored = await HealthBoard(store, "az2").read("az1")
    assert stored == second
    body = json.loads((await store.inner.get(health_key("az1")))[0])
    assert set(body) == {"zone", "status", "sequence", "measuredAt", "holder", "checks"}
    assert body["checks"]["postgres"] == {"ok": False, "detail": "Unavailable: refused"}


async def test_a_new_publisher_continues_the_sequence(store: FaultyStore) -> None:
    """A restarted agent, or the next leader of the zone, never goes back in sequence."""
    await HealthBoard(store, "az1").publish({"ingestion": OK}, "old")
    await HealthBoard(store, "az1").publish({"ingestion": OK}, "old")
    successor = await HealthBoard(store, "az1").publish({}, "new")
    assert (successor.sequence, successor.holder) == (3, "new")
    assert successor.status is HealthStatus.UNKNOWN


async def test_an_unreadable_record(store: FaultyStore) -> None:
    await store.inner.put(health_key("az1"), b"{not json")
    board = HealthBoard(store, "az1")
    with pytest.raises(HealthCorrupted, match=r"az1/health\.json"):
        await board.read("az1")
    written = await board.publish({"ingestion": OK}, "me")
    assert written.sequence == 1
    assert await board.read("az1") == written


def test_describe_is_the_wire_form() -> None:
    health = ZoneHealth.decode(
        json.dumps(
            {
                "zone": "az1",
                "status": "healthy",
                "sequence": 4,
                "measuredAt": "2030-01-01T00:00:00Z",
                "holder": "h",
                "checks": {"postgres": {"ok": True, "detail": ""}},
                "futureField": 1,
            }
        ).encode(),
        "az1/health.json",
    )
    described = health.describe()
    assert described["measuredAt"] == "2030-01-01T00:00:00Z"
    assert described["checks"] == {"postgres": {"ok": True, "detail": ""}}
    assert "futureField" not in described
