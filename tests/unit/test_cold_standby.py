"""Cold standby's logic on an in-memory scaler: sizes chosen, recorded, waited for."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from az_agent.agent.config import ColdStandbySettings, ConfigError
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.operations.activate import PHASES as ACTIVATION_PHASES
from az_agent.agent.operations.activate import Activation
from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.journal import Operation
from az_agent.agent.operations.requests import ActivateRequest
from az_agent.agent.standby.cold import ColdStandby, WorkloadsNotReady, resolve_namespace
from az_agent.drivers.errors import NotFound
from az_agent.drivers.kubernetes.base import WorkloadKind
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state.keys import workloads_key
from az_agent.state.workloads import ZoneWorkloads, read_workloads
from tests.fakeclock import FakeClock
from tests.fakeworkloads import FakeWorkloads
from tests.unit.state.helpers import file_store

STS, DEPLOY = WorkloadKind.STATEFULSET, WorkloadKind.DEPLOYMENT
NS, ZONE = "kfuse", "az2"
PART_OF = {"app.kubernetes.io/part-of": "kfuse"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    bucket = await file_store(tmp_path / "bucket")
    yield bucket
    await bucket.close()


def settings(**raw: Any) -> ColdStandbySettings:
    return ColdStandbySettings.model_validate(raw)


NAMED = [
    {"kind": "Deployment", "name": "pinot-broker", "replicas": 2},
    {"kind": "StatefulSet", "name": "pinot-server"},
    {"kind": "StatefulSet", "name": "postgres"},
]


def zone_at_zero(kubelet_step: int = 0) -> FakeWorkloads:
    scaler = FakeWorkloads(kubelet_step=kubelet_step)
    scaler.add(DEPLOY, "pinot-broker", 0, labels=PART_OF)
    scaler.add(STS, "pinot-server", 0, labels=PART_OF)
    scaler.add(STS, "postgres", 0, labels=PART_OF)
    scaler.add(DEPLOY, "grafana", 1)
    return scaler


def cold(
    scaler: FakeWorkloads, store: ObjectStore, clock: FakeClock | None = None, **raw: Any
) -> ColdStandby:
    return ColdStandby(
        scaler,
        settings(**raw),
        NS,
        store=store,
        zone=ZONE,
        clock=clock or FakeClock(auto_advance=True),
    )


async def record_sizes(store: ObjectStore, *sizes: tuple[WorkloadKind, str, int]) -> None:
    """What an earlier active period of the zone left in the bucket."""
    scaler = FakeWorkloads()
    for kind, name, replicas in sizes:
        scaler.add(kind, name, replicas)
    named = [{"kind": str(kind), "name": name} for kind, name, _ in sizes]
    assert await cold(scaler, store, workloads=named).record(7) is not None


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, line: str) -> None:
        self.lines.append(line)


async def test_sizes_come_from_configuration_then_the_record_then_one(
    store: ObjectStore,
) -> None:
    # The configured 2 wins over the 5 recorded for pinot-broker.
    await record_sizes(store, (STS, "pinot-server", 3), (DEPLOY, "pinot-broker", 5))
    scaler = zone_at_zero(kubelet_step=5)
    detail = await cold(scaler, store, workloads=NAMED).scale_up(Said())
    assert scaler.scaled == [
        (DEPLOY, "pinot-broker", 2),
        (STS, "pinot-server", 3),
        (STS, "postgres", 1),
    ]
    assert detail == (
        "3 workloads ready: pinot-broker 2/2 (configured), pinot-server 3/3 (recorded), "
        "postgres 1/1 (default)"
    )
    assert scaler.get(DEPLOY, "grafana").replicas == 1  # not the zone's


async def test_activation_never_scales_a_workload_down(store: ObjectStore) -> None:
    scaler = zone_at_zero(kubelet_step=5)
    scaler.add(DEPLOY, "pinot-broker", 5)  # an operator was quicker
    said = Said()
    await cold(scaler, store, workloads=NAMED).scale_up(said)
    assert said.lines[0] == "1/3 workloads ready: pinot-server 0/1, postgres 0/1"
    assert (DEPLOY, "pinot-broker", 2) not in scaler.scaled
    assert scaler.get(DEPLOY, "pinot-broker").replicas == 5


async def test_it_waits_until_every_workload_is_ready_and_says_so(store: ObjectStore) -> None:
    await record_sizes(store, (STS, "pinot-server", 3))
    scaler = zone_at_zero(kubelet_step=1)  # one more pod ready per look
    clock = FakeClock(auto_advance=True)
    said = Said()
    await cold(scaler, store, clock, workloads=NAMED).scale_up(said)
    assert said.lines[0] == "0/3 workloads ready: pinot-broker 0/2, pinot-server 0/3, postgres 0/1"
    assert "2/3 workloads ready: pinot-server 2/3" in said.lines
    assert len(said.lines) == len(set(said.lines)), "a line is saved only when it changes"
    assert all(scaler.get(k, n).ready_replicas >= r for k, n, r in scaler.scaled)
    assert scaler.lists >= 3
    assert clock.slept > 0


async def test_the_timeout_names_the_workloads_that_are_not_ready(store: ObjectStore) -> None:
    await record_sizes(store, (STS, "pinot-server", 3))
    scaler = zone_at_zero()
    clock = FakeClock(auto_advance=True)

    async def kubelet(line: str) -> None:
        del line
        for kind, name in ((DEPLOY, "pinot-broker"), (STS, "postgres")):
            scaler.mark_ready(kind, name)

    said = Said()

    async def kubelet_and_said(line: str) -> None:
        await kubelet(line)
        await said(line)

    standby = cold(scaler, store, clock, workloads=NAMED, readyTimeoutSeconds=30)
    started = clock.monotonic()
    with pytest.raises(WorkloadsNotReady) as failed:
        await standby.scale_up(kubelet_and_said)
    assert scaler.lists > 5
    assert said.lines == [  # saved when it changes, not at every look
        "0/3 workloads ready: pinot-broker 0/2, pinot-server 0/3, postgres 0/1",
        "2/3 workloads ready: pinot-server 0/3",
    ]
    assert str(failed.value) == (
        "workloads not ready after 30s: StatefulSet kfuse/pinot-server 0/3 ready"
    )
    assert clock.monotonic() - started == pytest.approx(30)


async def test_an_api_server_that_does_not_answer_is_waited_out(store: ObjectStore) -> None:
    scaler = zone_at_zero(kubelet_step=5)
    said = Said()

    async def flaky(line: str) -> None:
        await said(line)
        if len(said.lines) == 1:
            scaler.down = 2

    await cold(scaler, store, workloads=NAMED).scale_up(flaky)
    assert any("Kubernetes API: injected" in line for line in said.lines)


async def test_recording_never_forgets_a_size(store: ObjectStore) -> None:
    scaler = FakeWorkloads()
    scaler.add(STS, "pinot-server", 3)
    scaler.add(STS, "postgres", 0)  # never seen running: nothing to remember
    standby = cold(scaler, store, workloads=NAMED[1:])
    first = await standby.record(4)
    assert first is not None
    assert first.counts() == {(NS, STS, "pinot-server"): 3}
    assert await standby.record(4) is None, "unchanged: not written again"

    await scaler.scale(NS, STS, "pinot-server", 0)
    assert await standby.record(5) is None
    saved = await read_workloads(store, ZONE)
    assert saved is not None
    assert saved.replicas(NS, STS, "pinot-server") == 3

    await scaler.scale(NS, STS, "pinot-server", 5)
    await scaler.scale(NS, STS, "postgres", 2)
    assert await standby.record(6) is not None
    saved = await read_workloads(store, ZONE)
    assert saved is not None
    assert saved.counts() == {(NS, STS, "pinot-server"): 5, (NS, STS, "postgres"): 2}
    assert saved.epoch == 6


async def test_scale_down_records_first_then_scales_to_zero(store: ObjectStore) -> None:
    scaler = FakeWorkloads()
    scaler.add(STS, "pinot-server", 3)
    scaler.add(STS, "postgres", 1)
    standby = cold(scaler, store, workloads=NAMED[1:])
    assert await standby.scale_down(9) == "scaled to 0: pinot-server (was 3), postgres (was 1)"
    assert [w.replicas for w in scaler.items.values()] == [0, 0]
    saved = await read_workloads(store, ZONE)
    assert saved is not None
    assert saved.counts()[(NS, STS, "pinot-server")] == 3
    assert await standby.scale_down(10) == "2 workloads already at 0"
    # ...and the next activation brings back what ran.
    scaler.kubelet_step = 5
    await standby.scale_up(Said())
    assert scaler.get(STS, "pinot-server").replicas == 3


async def test_a_selector_names_the_workloads_and_named_ones_come_first(
    store: ObjectStore,
) -> None:
    scaler = zone_at_zero(kubelet_step=5)
    standby = cold(scaler, store, workloads=[NAMED[2]], selector="app.kubernetes.io/part-of=kfuse")
    assert [w.name for w in await standby.workloads()] == [
        "postgres",
        "pinot-broker",
        "pinot-server",
    ]
    plan = await standby.plan()
    assert plan["namespace"] == NS
    assert [(w["name"], w["target"], w["from"], w["scale"]) for w in plan["workloads"]] == [
        ("postgres", 1, "default", True),
        ("pinot-broker", 1, "default", True),
        ("pinot-server", 1, "default", True),
    ]
    assert scaler.scaled == [], "a plan changes nothing"


async def test_missing_workloads_are_named(store: ObjectStore) -> None:
    scaler = zone_at_zero()
    with pytest.raises(NotFound, match=r"StatefulSet kfuse/kafka .* not found"):
        await cold(scaler, store, workloads=[{"kind": "StatefulSet", "name": "kafka"}]).ping()
    with pytest.raises(NotFound, match=re.escape("matches coldStandby.selector 'tier=none'")):
        await cold(scaler, store, selector="tier=none").scale_up(Said())
    plan = await cold(scaler, store, selector="tier=none").plan()
    assert plan["workloads"] is None
    assert "tier=none" in plan["error"]


async def test_an_unreadable_record_is_ignored_and_replaced(store: ObjectStore) -> None:
    await store.put(workloads_key(ZONE), b"{not json")
    scaler = zone_at_zero(kubelet_step=5)
    standby = cold(scaler, store, workloads=NAMED[1:2])
    await standby.scale_up(Said())
    assert scaler.scaled == [(STS, "pinot-server", 1)]
    assert await standby.record(3) is not None
    saved = await read_workloads(store, ZONE)
    assert isinstance(saved, ZoneWorkloads)
    assert saved.counts() == {(NS, STS, "pinot-server"): 1}


@dataclass
class StubSession:
    epoch: int
    rounds: int

    @property
    def is_usable(self) -> bool:
        self.rounds -= 1
        return self.rounds >= 0


async def test_the_leader_records_at_once_and_then_on_change(store: ObjectStore) -> None:
    scaler = FakeWorkloads()
    scaler.add(STS, "pinot-server", 2)
    clock = FakeClock(auto_advance=True)
    standby = cold(scaler, store, clock, workloads=NAMED[1:2])
    await standby.run(cast(LeaderSession, StubSession(epoch=3, rounds=1)))
    saved = await read_workloads(store, ZONE)
    assert saved is not None
    assert saved.counts() == {(NS, STS, "pinot-server"): 2}
    assert clock.slept == 300

    scaler.down = 1  # one failed look is logged and retried at the next round
    scaler.add(STS, "pinot-server", 4)
    await standby.run(cast(LeaderSession, StubSession(epoch=3, rounds=2)))
    saved = await read_workloads(store, ZONE)
    assert saved is not None
    assert saved.replicas(NS, STS, "pinot-server") == 4


def test_the_namespace_is_configured_or_the_pods_own(tmp_path: Path) -> None:
    account = tmp_path / "namespace"
    assert resolve_namespace(settings(namespace="kfuse-az2"), path=account) == "kfuse-az2"
    assert resolve_namespace(settings(), fallback="from-global", path=account) == "from-global"
    account.write_text("kfuse-own\n")
    assert resolve_namespace(settings(), fallback="from-global", path=account) == "kfuse-own"
    account.unlink()
    with pytest.raises(ConfigError, match=re.escape("coldStandby.namespace: empty")):
        resolve_namespace(settings(), path=account)


def test_an_activation_journaled_before_scale_up_existed_runs_the_phases_it_lists() -> None:
    """An agent upgraded mid-activation resumes the operation its predecessor journaled,
    without a phase that operation does not know (``get_phase`` would fail on it)."""
    old = [name for name in ACTIVATION_PHASES if name != "scale-up"]
    now = datetime(2026, 12, 1, tzinfo=UTC)
    request = ActivateRequest(zone="az1")
    agent = cast(AgentContext, None)  # _steps only names the work; nothing runs here
    journaled = Activation(agent, request, Operation.start("activate", old, now))
    assert [name for name, _ in journaled._steps()] == old
    current = Activation(agent, request, Operation.start("activate", ACTIVATION_PHASES, now))
    names = [name for name, _ in current._steps()]
    assert names == list(ACTIVATION_PHASES)
    assert names.index("scale-up") == names.index("fence-source") + 1
