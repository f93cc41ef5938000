"""Cold standby against a real kube-apiserver 1.20 (tests/servers/kubernetes.py).

Zone az1 backs up its Pinot (an emulator) to a file bucket and pauses; zone az2 is cold: its
Pinot and PostgreSQL StatefulSets are at 0 replicas. az2's agent is built exactly as
``az-agent run`` builds it (``build_agent``), reaching the API server through a kubeconfig. There
is no kubelet: the test marks the pods Running and Ready through their status subresource after
a delay, as a kubelet would, and the StatefulSet controller carries that into ``readyReplicas``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.config import AgentConfig
from az_agent.agent.daemon import Agent, AgentDeps
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.operations.requests import ActivateRequest, PauseRequest
from az_agent.agent.operations.states import AgentState
from az_agent.agent.standby.cold import ColdStandby
from az_agent.agent.wiring import StartupRefused, build_agent
from az_agent.drivers.alerts import open_silence_manager
from az_agent.drivers.errors import PermissionDenied
from az_agent.drivers.kubernetes.base import WorkloadKind
from az_agent.drivers.kubernetes.workloads import KubernetesWorkloads
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.pinot.models import TableRef, TableType
from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.emulators.pinot import EmulatorOptions, PinotEmulator, SeedTable
from az_agent.state import SystemClock, load_catalog
from az_agent.state.workloads import (
    RecordedWorkload,
    ZoneWorkloads,
    read_workloads,
    write_workloads,
)
from tests.integration.agent_operations.conftest import until
from tests.integration.leftovers import settle
from tests.servers.kubernetes import KubernetesApiServer, manifest
from tests.serving import serving
from tests.zoneconfig import file_zone_config

STS, DEPLOY = WorkloadKind.STATEFULSET, WorkloadKind.DEPLOYMENT
TABLE = TableRef("events", TableType.REALTIME)
PART_OF = {"app.kubernetes.io/part-of": "kfuse"}
ROLE = Path(__file__).parents[3] / "deploy" / "kubernetes" / "agent-role.yaml"


config = file_zone_config


@contextlib.asynccontextmanager
async def running(cfg: AgentConfig) -> AsyncIterator[Agent]:
    """An agent built as ``az-agent run`` builds it, running for the block."""
    async with build_agent(cfg) as agent, serving(agent):
        yield agent


async def backed_up_and_paused(root: Path, pinot: PinotEmulator, segments: int) -> set[str]:
    """Zone az1 (no cold standby) backs up ``segments`` segments, then pauses; their names."""
    store = FileObjectStore(root)
    await store.check()
    clock, metrics = SystemClock(), AgentMetrics("az1")
    cfg = config(root, "az1", pinot.url, role="active")
    for _ in range(segments):
        await pinot.cluster.produce_segment(TABLE.name_with_type)
    async with contextlib.AsyncExitStack() as stack:
        controller = await stack.enter_async_context(HttpPinotController(pinot.url))
        silences = open_silence_manager("", matchers=[], created_by="az-agent-test")
        stack.push_async_callback(silences.close)
        stack.push_async_callback(store.close)
        backup = SegmentBackupLoop(controller, cfg.service.pinot, metrics, clock)
        deps = AgentDeps(cfg, store, clock, controller, None, silences, backup, None, metrics)
        async with serving(Agent(deps)) as az1:
            names: set[str] = set()
            deadline = asyncio.get_running_loop().time() + 30
            while len(names) < segments:
                assert asyncio.get_running_loop().time() < deadline, "az1 did not back up"
                await asyncio.sleep(0.1)
                catalog = await load_catalog(store, "az1")
                names = {r.name for r in catalog.segments(table=TABLE.name_with_type)}
            status, _ = await az1.pause(PauseRequest())
            assert status == 200
            catalog = await load_catalog(store, "az1")
            return {r.name for r in catalog.segments(table=TABLE.name_with_type)}


@pytest.fixture
async def emulators(tmp_path: Path) -> AsyncIterator[tuple[PinotEmulator, PinotEmulator]]:
    """az1's Pinot with a REALTIME table; az2's empty (what its StatefulSet would run)."""
    before = set(asyncio.all_tasks())
    options = EmulatorOptions(seed=5, segment_size=16 << 10)
    async with (
        PinotEmulator(
            tmp_path / "pinot-az1",
            options=options,
            seed_tables=[SeedTable(TABLE.raw, "REALTIME", 2)],
        ) as one,
        PinotEmulator(tmp_path / "pinot-az2", options=options) as two,
    ):
        yield one, two
    await settle(before)


@pytest.fixture
async def ns(kube_apiserver: KubernetesApiServer) -> str:
    return await kube_apiserver.create_namespace()


def phases_of(agent: Agent) -> dict[str, dict[str, Any]]:
    operation = agent.status()["operation"]
    assert operation is not None
    return {p["name"]: p for p in operation["phases"]}


async def replicas(kube: KubernetesApiServer, kind: WorkloadKind, ns: str, name: str) -> int:
    return int((await kube.get_workload(kind, ns, name))["spec"].get("replicas", 0))


async def kubelet(kube: KubernetesApiServer, ns: str, *workloads: tuple[WorkloadKind, str]) -> None:
    """Once each workload has been scaled up, a moment later, its pods get ready."""

    async def one(kind: WorkloadKind, name: str) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while await replicas(kube, kind, ns, name) == 0:
            assert asyncio.get_running_loop().time() < deadline, f"{name} was not scaled up"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        await kube.mark_ready(kind, ns, name)

    await asyncio.gather(*(one(kind, name) for kind, name in workloads))


async def test_a_cold_zone_scales_up_to_its_recorded_size_waits_then_restores(
    kube_apiserver: KubernetesApiServer,
    ns: str,
    emulators: tuple[PinotEmulator, PinotEmulator],
    tmp_path: Path,
) -> None:
    one, two = emulators
    root = tmp_path / "bucket"
    expected = await backed_up_and_paused(root, one, segments=3)
    await kube_apiserver.create_statefulset(ns, "pinot-server", replicas=0)
    await kube_apiserver.create_statefulset(ns, "postgres", replicas=0)
    store: ObjectStore = FileObjectStore(root)
    # What az2 recorded the last time it was active.
    await write_workloads(
        store,
        ZoneWorkloads(
            zone="az2",
            recorded_at=datetime.now(UTC),
            epoch=4,
            workloads=[
                RecordedWorkload(namespace=ns, kind=STS, name="pinot-server", replicas=2),
                RecordedWorkload(namespace=ns, kind=STS, name="postgres", replicas=1),
            ],
        ),
    )
    cold = {
        "namespace": ns,
        "workloads": [
            {"kind": "StatefulSet", "name": "pinot-server"},
            {"kind": "StatefulSet", "name": "postgres"},
        ],
        "readyTimeoutSeconds": 120,
    }
    cfg = config(
        root,
        "az2",
        two.url,
        role="standby",
        kubernetes={"kubeconfig": kube_apiserver.kubeconfig},
        coldStandby=cold,
    )
    async with running(cfg) as az2:
        _, answer = await az2.readyz()
        assert answer["dependencies"]["kubernetes"] == "ok", answer

        status, plan = await az2.activate(ActivateRequest(zone="az1", dry_run=True))
        assert status == 200
        assert plan["workloads"]["namespace"] == ns
        assert [
            (w["name"], w["replicas"], w["target"], w["from"])
            for w in plan["workloads"]["workloads"]
        ] == [
            ("pinot-server", 0, 2, "recorded"),
            ("postgres", 0, 1, "recorded"),
        ]
        assert await replicas(kube_apiserver, STS, ns, "pinot-server") == 0, "a plan scales nothing"

        status, _ = await az2.activate(ActivateRequest(zone="az1"))
        assert status == 202

        def waiting() -> bool:
            phase = phases_of(az2)["scale-up"]
            return bool(phase["status"] == "running" and phase["detail"].startswith("0/2 workl"))

        await until(waiting, "the activation to wait for the workloads")
        assert await replicas(kube_apiserver, STS, ns, "pinot-server") == 2
        assert await replicas(kube_apiserver, STS, ns, "postgres") == 1
        await asyncio.sleep(1.5)  # the kubelet takes its time; the activation waits
        assert az2.status()["operation"]["phase"] == "scale-up"
        assert phases_of(az2)["scale-up"]["detail"] == (
            "0/2 workloads ready: pinot-server 0/2, postgres 0/1"
        )
        journaled = json.loads((await store.get("az2/operations/current.json"))[0])
        [scale_up] = [p for p in journaled["phases"] if p["name"] == "scale-up"]
        assert scale_up["detail"].startswith("0/2 workloads ready"), "saved for a restart too"
        async with HttpPinotController(two.url) as az2_pinot:
            assert await az2_pinot.list_tables() == [], "nothing is restored before they are up"

        await kube_apiserver.mark_ready(STS, ns, "postgres")
        await until(
            lambda: phases_of(az2)["scale-up"]["detail"].startswith("1/2 workloads ready"),
            "progress to show postgres ready",
        )
        await kube_apiserver.mark_ready(STS, ns, "pinot-server")
        await until(lambda: az2.state is AgentState.ACTIVE, "az2's activation", within=60)

        phases = phases_of(az2)
        assert phases["scale-up"]["detail"] == (
            "2 workloads ready: pinot-server 2/2 (recorded), postgres 1/1 (recorded)"
        )
        operation = az2.status()["operation"]
        assert operation["status"] == "succeeded"
        names = [p["name"] for p in operation["phases"]]
        assert names.index("scale-up") == names.index("fence-source") + 1
        assert names.index("scale-up") + 1 == names.index("restore-postgres")
        async with HttpPinotController(two.url) as az2_pinot:
            restored = {s.name for s in await az2_pinot.segments(TABLE)}
        assert expected <= restored
    await store.close()


async def test_a_dry_run_of_a_cold_zone_whose_pinot_does_not_run_yet(
    kube_apiserver: KubernetesApiServer,
    ns: str,
    emulators: tuple[PinotEmulator, PinotEmulator],
    tmp_path: Path,
) -> None:
    """Nothing answers at az2's Pinot address until the activation scales it up: the plan
    moves every segment and lists the workloads it would scale, and changes nothing."""
    one, _ = emulators
    root = tmp_path / "bucket"
    expected = await backed_up_and_paused(root, one, segments=2)
    await kube_apiserver.create_statefulset(ns, "pinot-server", replicas=0)
    cfg = config(
        root,
        "az2",
        "http://127.0.0.1:1",
        role="standby",
        kubernetes={"kubeconfig": kube_apiserver.kubeconfig},
        coldStandby={
            "namespace": ns,
            "workloads": [{"kind": "StatefulSet", "name": "pinot-server"}],
        },
    )
    async with running(cfg) as az2:
        status, plan = await az2.activate(ActivateRequest(zone="az1", dry_run=True))
    assert status == 200
    assert plan["segments"]["toMove"] == len(expected)
    assert plan["segmentsAlreadyPresent"] == 0
    assert plan["tablesToCreate"] == [TABLE.name_with_type]
    [workload] = plan["workloads"]["workloads"]
    assert (workload["name"], workload["target"], workload["from"]) == (
        "pinot-server",
        1,
        "default",
    )
    assert await replicas(kube_apiserver, STS, ns, "pinot-server") == 0


async def test_scale_down_on_pause_with_a_selector_keeps_the_size_and_resume_restores_it(
    kube_apiserver: KubernetesApiServer,
    ns: str,
    emulators: tuple[PinotEmulator, PinotEmulator],
    tmp_path: Path,
) -> None:
    """An active zone records what runs; /pause scales it to 0 and the record keeps the sizes,
    which /resume in place brings back; the workloads are found by label, and one without the
    label is left alone."""
    _, two = emulators
    root = tmp_path / "bucket"
    await kube_apiserver.create_deployment(ns, "pinot-broker", replicas=2, labels=PART_OF)
    await kube_apiserver.create_statefulset(ns, "pinot-server", replicas=3, labels=PART_OF)
    await kube_apiserver.create_deployment(ns, "grafana", replicas=1)
    await asyncio.gather(
        kube_apiserver.mark_ready(DEPLOY, ns, "pinot-broker"),
        kube_apiserver.mark_ready(STS, ns, "pinot-server"),
        kube_apiserver.mark_ready(DEPLOY, ns, "grafana"),
    )
    selector = ",".join(f"{k}={v}" for k, v in PART_OF.items())
    cfg = config(
        root,
        "az2",
        two.url,
        role="active",
        kubernetes={"kubeconfig": kube_apiserver.kubeconfig},
        coldStandby={
            "namespace": ns,
            "selector": selector,
            "scaleDownOnPause": True,
            "readyTimeoutSeconds": 60,
        },
    )
    store = FileObjectStore(root)
    await store.check()
    async with running(cfg) as az2:
        recorded: ZoneWorkloads | None = None

        async def record_written() -> bool:
            nonlocal recorded
            recorded = await read_workloads(store, "az2")
            return recorded is not None

        deadline = asyncio.get_running_loop().time() + 30
        while not await record_written():
            assert asyncio.get_running_loop().time() < deadline, "the leader did not record"
            await asyncio.sleep(0.1)
        assert recorded is not None
        assert recorded.counts() == {(ns, DEPLOY, "pinot-broker"): 2, (ns, STS, "pinot-server"): 3}

        status, body = await az2.pause(PauseRequest())
        assert (status, body["state"]) == (200, "PAUSED"), body
        phases = body["operation"]["phases"]
        assert [p["name"] for p in phases][-2:] == ["release-lease", "scale-down"]
        assert phases[-1]["detail"] == "scaled to 0: pinot-broker (was 2), pinot-server (was 3)"
        assert body["operation"]["warnings"] == []
        assert await replicas(kube_apiserver, DEPLOY, ns, "pinot-broker") == 0
        assert await replicas(kube_apiserver, STS, ns, "pinot-server") == 0
        assert await replicas(kube_apiserver, DEPLOY, ns, "grafana") == 1
        await kube_apiserver.mark_ready(STS, ns, "pinot-server")  # the pods go away
        after = await read_workloads(store, "az2")
        assert after is not None
        assert after.counts() == recorded.counts(), "a zone scaled to 0 keeps its size"

        # /resume in place (nobody took over) brings the zone back to that size first.
        pods = kubelet(kube_apiserver, ns, (DEPLOY, "pinot-broker"), (STS, "pinot-server"))
        (status, body), _ = await asyncio.gather(az2.resume(), pods)
        assert (status, body["state"]) == (200, "ACTIVE"), body
        assert body["workloads"] == (
            "2 workloads ready: pinot-broker 2/2 (recorded), pinot-server 3/3 (recorded)"
        )
        assert await replicas(kube_apiserver, STS, ns, "pinot-server") == 3
    await store.close()


async def test_the_agents_role_is_enough_and_nothing_more(
    kube_apiserver: KubernetesApiServer, ns: str, tmp_path: Path
) -> None:
    """The scaler authenticated as a service account bound only to
    deploy/kubernetes/agent-role.yaml records, scales up (waiting for readiness) and down in its
    namespace, and is refused in any other."""
    await kube_apiserver.create_statefulset(ns, "pinot-server", replicas=0, labels=PART_OF)
    await kube_apiserver.create_deployment(ns, "pinot-broker", replicas=0, labels=PART_OF)
    await kube_apiserver.create_service_account(ns, "az-agent")
    await kube_apiserver.apply(manifest(ROLE, ns))
    token = await kube_apiserver.token_for(ns, "az-agent")
    elsewhere = await kube_apiserver.create_namespace()
    await kube_apiserver.create_statefulset(elsewhere, "pinot-server", replicas=0)
    store = FileObjectStore(tmp_path / "bucket")
    await store.check()
    settings = config(
        tmp_path / "bucket",
        "az2",
        "http://127.0.0.1:1",
        coldStandby={"namespace": ns, "selector": "app.kubernetes.io/part-of=kfuse"},
    ).service.cold_standby
    async with await KubernetesWorkloads.connect(kube_apiserver.connection(token)) as scaler:
        cold = ColdStandby(scaler, settings, ns, store=store, zone="az2", clock=SystemClock())
        said: list[str] = []

        async def progress(line: str) -> None:
            said.append(line)

        pods = kubelet(kube_apiserver, ns, (DEPLOY, "pinot-broker"), (STS, "pinot-server"))
        detail, _ = await asyncio.gather(cold.scale_up(progress), pods)
        assert detail == "2 workloads ready: pinot-broker 1/1 (default), pinot-server 1/1 (default)"
        assert said[0] == "0/2 workloads ready: pinot-broker 0/1, pinot-server 0/1"
        assert await cold.record(3) is not None
        assert await cold.scale_down(3) == "scaled to 0: pinot-broker (was 1), pinot-server (was 1)"
        assert await replicas(kube_apiserver, STS, ns, "pinot-server") == 0
        await cold.ping()

        other = ColdStandby(
            scaler, settings, elsewhere, store=store, zone="az2", clock=SystemClock()
        )
        with pytest.raises(PermissionDenied, match="cannot list resource"):
            await other.ping()
        with pytest.raises(PermissionDenied, match='cannot patch resource "statefulsets/scale"'):
            await scaler.scale(elsewhere, STS, "pinot-server", 1)
    await store.close()


async def test_a_cold_standby_without_a_namespace_or_a_cluster_refuses_the_start(
    tmp_path: Path,
) -> None:
    named = {"workloads": [{"kind": "StatefulSet", "name": "pinot-server"}]}
    cfg = config(tmp_path / "bucket", "az2", "http://127.0.0.1:1", coldStandby=named)
    with pytest.raises(StartupRefused, match=re.escape("coldStandby.namespace: empty")):
        async with build_agent(cfg):
            pass
    missing = str(tmp_path / "no-kubeconfig")
    cfg = config(
        tmp_path / "bucket",
        "az2",
        "http://127.0.0.1:1",
        kubernetes={"kubeconfig": missing},
        coldStandby={**named, "namespace": "kfuse"},
    )
    with pytest.raises(
        StartupRefused, match=f"kubernetes \\(coldStandby\\): .*no kubeconfig at {missing}"
    ):
        async with build_agent(cfg):
            pass
