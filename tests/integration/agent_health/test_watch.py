"""The health watch on a file bucket: only the zone's leader publishes, with a growing
sequence; every agent keeps its own measurement and reads its peer's record; the gauge follows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest

from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.standby.health import (
    HealthWatchDeps,
    ZoneHealthView,
    ZoneHealthWatch,
    peer_zone_of,
)
from az_agent.state import HealthBoard, HealthCheck, HealthStatus, PrimaryRecord
from tests.fakeclock import FakeClock
from tests.unit.state.helpers import FaultyStore, file_store

OK = HealthCheck(ok=True, detail="GOOD")
DOWN = HealthCheck(ok=False, detail="Unavailable: refused")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    opened = await file_store(tmp_path / "bucket")
    yield opened
    await opened.close()


class Zone:
    """One agent's surroundings: what its probe answers, whether it leads, who its peer is."""

    def __init__(self, store: FaultyStore, zone: str, holder: str) -> None:
        self.checks: dict[str, HealthCheck] = {"pinot-controller": OK, "ingestion": OK}
        self.leader = False
        self.unled = False
        self.peer: str | None = None
        self.probed: list[Mapping[str, HealthCheck]] = []
        self.metrics = AgentMetrics(zone)
        self.watch = ZoneHealthWatch(
            HealthWatchDeps(
                probe=self._probe,
                board=HealthBoard(store, zone, clock=FakeClock()),
                holder=holder,
                is_leader=lambda: self.leader,
                unled=lambda: self.unled,
                peer_zone=lambda: self.peer,
                clock=FakeClock(),
                metrics=self.metrics,
                period=1.0,
                on_probed=self.probed.append,
            )
        )

    async def _probe(self) -> dict[str, HealthCheck]:
        return dict(self.checks)

    def view(self) -> ZoneHealthView:
        """Read afresh each time (mypy would narrow an attribute read across awaits)."""
        return self.watch.view

    def gauge(self, zone: str, check: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "az_agent_zone_health", {"zone": zone, "check": check}
        )


async def test_only_the_leader_publishes_and_its_sequence_grows(store: FaultyStore) -> None:
    agent = Zone(store, "az1", "az1-agent-a")
    await agent.watch.round()
    assert store.calls["put"] == 0, "a non-leader writes nothing"
    own = agent.view().own
    assert own is not None
    assert own.status is HealthStatus.HEALTHY
    assert not agent.view().published
    assert agent.probed == [agent.checks]

    agent.leader = True
    await agent.watch.round()
    agent.checks["ingestion"] = DOWN
    await agent.watch.round()
    published = await HealthBoard(store, "az2").read("az1")
    assert published is not None
    assert (published.sequence, published.status) == (2, HealthStatus.UNHEALTHY)
    assert published.holder == "az1-agent-a"
    assert agent.view().own == published
    assert agent.view().published
    assert agent.gauge("az1", "ingestion") == 0
    assert agent.gauge("az1", "pinot-controller") == 1

    successor = Zone(store, "az1", "az1-agent-b")  # the next leader continues the sequence
    successor.leader = True
    await successor.watch.round()
    latest = await HealthBoard(store, "az2").read("az1")
    assert latest is not None
    assert latest.sequence == 3


async def test_the_replicas_of_a_zone_nobody_leads_publish_it_by_turns(
    store: FaultyStore,
) -> None:
    """A standby zone: its replicas publish by compare-and-swap, so its peer sees it and the
    sequence only grows whichever replica wrote last."""
    one, two = Zone(store, "az2", "az2-agent-a"), Zone(store, "az2", "az2-agent-b")
    one.unled = two.unled = True
    sequences = []
    for agent in (one, two, one, two):
        await agent.watch.round()
        assert agent.view().published
        stored = await HealthBoard(store, "az2").read("az2")
        assert stored is not None
        assert stored.holder == agent.view().own.holder  # type: ignore[union-attr]
        sequences.append(stored.sequence)
    assert sequences == [1, 2, 3, 4]
    two.checks = {"pinot-controller": HealthCheck(ok=False, detail="down")}
    await two.watch.round()
    peer = Zone(store, "az1", "az1-agent-a")
    peer.peer = "az2"
    await peer.watch.round()
    seen = peer.view().peer
    assert seen is not None
    assert seen.status is HealthStatus.UNHEALTHY


async def test_a_lost_swap_leaves_the_winner_s_verdict(store: FaultyStore) -> None:
    agent = Zone(store, "az2", "az2-agent-a")
    agent.unled = True
    rival = HealthBoard(store, "az2")

    async def rival_writes_first(op: str, key: str) -> None:
        if op == "put" and key.endswith("health.json"):
            store.before = _nothing
            await rival.publish({"pinot-controller": OK}, "az2-agent-b")

    store.before = rival_writes_first
    await agent.watch.round()
    assert not agent.view().published
    stored = await rival.read("az2")
    assert stored is not None
    assert stored.holder == "az2-agent-b"


async def _nothing(op: str, key: str) -> None:
    del op, key


async def test_every_agent_reads_its_peer(store: FaultyStore) -> None:
    primary, standby = Zone(store, "az1", "az1-agent"), Zone(store, "az2", "az2-agent")
    primary.leader, standby.peer = True, "az1"
    await standby.watch.round()
    assert standby.view().peer is None, "nothing published yet"
    assert standby.view().peer_zone == "az1"

    primary.checks["pinot-controller"] = DOWN
    await primary.watch.round()
    await standby.watch.round()
    peer = standby.view().peer
    assert peer is not None
    assert (peer.zone, peer.sequence, peer.failing) == ("az1", 1, ["pinot-controller"])
    assert standby.gauge("az1", "pinot-controller") == 0
    assert standby.view().describe()["peer"]["status"] == "unhealthy"

    store.down = True  # the bucket fails: the last record is kept, nothing raises
    await standby.watch.round()
    assert standby.view().peer == peer
    store.down = False

    standby.peer = None  # no peer any more: its series go too
    await standby.watch.round()
    assert standby.view().peer is None
    assert standby.gauge("az1", "pinot-controller") is None


async def test_a_check_that_goes_away_loses_its_series(store: FaultyStore) -> None:
    agent = Zone(store, "az1", "az1-agent")
    agent.checks["postgres"] = OK
    await agent.watch.round()
    assert agent.gauge("az1", "postgres") == 1
    del agent.checks["postgres"]
    await agent.watch.round()
    assert agent.gauge("az1", "postgres") is None


async def test_a_failed_publication_keeps_the_measurement(store: FaultyStore) -> None:
    agent = Zone(store, "az1", "az1-agent")
    agent.leader = True
    store.down = True
    await agent.watch.round()
    assert agent.view().own is not None
    assert not agent.view().published


def _record(zone: str, previous: str | None = None) -> PrimaryRecord:
    return PrimaryRecord(
        zone=zone, term=2, since=datetime(2030, 1, 1, tzinfo=UTC), nonce="n", previous_zone=previous
    )


def test_peer_zone_rule() -> None:
    assert peer_zone_of("az2", _record("az1")) == "az1"
    assert peer_zone_of("az1", _record("az1"), "az3") == "az3"
    assert peer_zone_of("az1", _record("az1", previous="az2")) == "az2"
    assert peer_zone_of("az1", _record("az1", previous="az2"), "az1") == "az2"
    assert peer_zone_of("az1", _record("az1")) is None
    assert peer_zone_of("az1", None, "az2") == "az2"
    assert peer_zone_of("az1", None) is None
