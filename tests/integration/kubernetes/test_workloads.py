"""The scale driver against the fake API server: exact requests sent, answers and errors read."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from az_agent.drivers.errors import (
    Misconfigured,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from az_agent.drivers.kubernetes.base import Workload, WorkloadKind
from az_agent.drivers.kubernetes.client import KubernetesConnection, open_api_client
from az_agent.drivers.kubernetes.workloads import CONFLICT_ATTEMPTS, KubernetesWorkloads
from tests.integration.kubernetes.fake_apiserver import FakeApiServer

NS = "kfuse"
DEPLOYMENT = WorkloadKind.DEPLOYMENT
STATEFULSET = WorkloadKind.STATEFULSET
PART_OF = {"app.kubernetes.io/part-of": "kfuse"}


async def test_scale_patches_the_scale_subresource_with_a_merge_patch(
    apiserver: FakeApiServer, workloads: KubernetesWorkloads
) -> None:
    apiserver.add_workload("Deployment", NS, "pinot-broker", replicas=3)
    await workloads.scale(NS, DEPLOYMENT, "pinot-broker", 0)

    patch = apiserver.requests[-1]
    assert (patch.method, patch.path) == (
        "PATCH",
        "/apis/apps/v1/namespaces/kfuse/deployments/pinot-broker/scale",
    )
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"spec": {"replicas": 0}}
    assert patch.query == {}
    assert patch.headers["Authorization"] == f"Bearer {apiserver.token}"
    assert apiserver.objects[("deployments", NS, "pinot-broker")]["spec"]["replicas"] == 0
    # At zero the Scale's spec.replicas is omitted (omitempty); that still reads as 0.
    assert await workloads.get_replicas(NS, DEPLOYMENT, "pinot-broker") == 0
    assert apiserver.requests[-1].method == "GET"


async def test_statefulsets_scale_and_repeating_is_a_no_op(
    apiserver: FakeApiServer, workloads: KubernetesWorkloads
) -> None:
    stored = apiserver.add_workload("StatefulSet", NS, "pinot-server", replicas=0)
    await workloads.scale(NS, STATEFULSET, "pinot-server", 4)
    assert apiserver.requests[-1].path == (
        "/apis/apps/v1/namespaces/kfuse/statefulsets/pinot-server/scale"
    )
    assert await workloads.get_replicas(NS, STATEFULSET, "pinot-server") == 4
    version = stored["metadata"]["resourceVersion"]
    await workloads.scale(NS, STATEFULSET, "pinot-server", 4)
    assert stored["metadata"]["resourceVersion"] == version
    assert stored["spec"]["replicas"] == 4


async def test_negative_replicas_are_refused_before_sending(
    apiserver: FakeApiServer, workloads: KubernetesWorkloads
) -> None:
    apiserver.add_workload("Deployment", NS, "ui", replicas=1)
    with pytest.raises(ValueError, match=">= 0"):
        await workloads.scale(NS, DEPLOYMENT, "ui", -1)
    assert apiserver.requests == []


async def test_missing_workload_is_not_found(workloads: KubernetesWorkloads) -> None:
    with pytest.raises(NotFound, match=re.escape('deployments/scale.apps "nope" not found')):
        await workloads.get_replicas(NS, DEPLOYMENT, "nope")
    with pytest.raises(NotFound, match=re.escape('statefulsets.apps "nope" not found')):
        await workloads.scale(NS, STATEFULSET, "nope", 1)


def _seed(apiserver: FakeApiServer) -> None:
    for name in ("pinot-broker", "pinot-controller", "pinot-minion"):
        apiserver.add_workload("Deployment", NS, name, replicas=2, ready=1, labels=PART_OF)
    apiserver.add_workload("Deployment", NS, "ui", replicas=1, labels={**PART_OF, "tier": "ui"})
    apiserver.add_workload("Deployment", NS, "other", replicas=1)
    apiserver.add_workload("StatefulSet", NS, "pinot-server", replicas=0, labels=PART_OF)
    apiserver.add_workload("StatefulSet", NS, "kafka", replicas=3, labels=PART_OF)
    apiserver.add_workload("StatefulSet", "elsewhere", "pg", replicas=1, labels=PART_OF)


async def test_list_workloads_filters_by_selector(
    apiserver: FakeApiServer, workloads: KubernetesWorkloads
) -> None:
    _seed(apiserver)
    found = await workloads.list_workloads(NS, "app.kubernetes.io/part-of=kfuse,tier!=ui")
    assert [(w.kind, w.name, w.replicas, w.ready_replicas) for w in found] == [
        (DEPLOYMENT, "pinot-broker", 2, 1),
        (DEPLOYMENT, "pinot-controller", 2, 1),
        (DEPLOYMENT, "pinot-minion", 2, 1),
        (STATEFULSET, "kafka", 3, 3),
        (STATEFULSET, "pinot-server", 0, 0),
    ]
    assert found[0] == Workload(
        NS, DEPLOYMENT, "pinot-broker", 2, 1, {"app": "pinot-broker", **PART_OF}
    )
    lists = [r for r in apiserver.requests if r.method == "GET"]
    assert [r.path for r in lists] == [
        "/apis/apps/v1/namespaces/kfuse/deployments",
        "/apis/apps/v1/namespaces/kfuse/statefulsets",
    ]
    assert lists[0].query == {
        "labelSelector": "app.kubernetes.io/part-of=kfuse,tier!=ui",
        "limit": "500",
    }
    everything = await workloads.list_workloads(NS)
    assert len(everything) == 7
    assert await workloads.list_workloads("no-such-namespace") == []


async def test_list_workloads_follows_continue_tokens(
    apiserver: FakeApiServer, connection: KubernetesConnection
) -> None:
    _seed(apiserver)
    async with await KubernetesWorkloads.connect(connection) as scaler:
        expected = await scaler.list_workloads(NS, "app.kubernetes.io/part-of")
    apiserver.requests.clear()
    async with KubernetesWorkloads(await open_api_client(connection), page_size=2) as paged:
        assert await paged.list_workloads(NS, "app.kubernetes.io/part-of") == expected
    assert len(expected) == 6
    # 4 deployments in two pages of 2; the 2 statefulsets fit in one page.
    assert [("continue" in r.query, r.path.rsplit("/", 1)[1]) for r in apiserver.requests] == [
        (False, "deployments"),
        (True, "deployments"),
        (False, "statefulsets"),
    ]


async def test_bad_selector_is_misconfigured(
    apiserver: FakeApiServer, workloads: KubernetesWorkloads
) -> None:
    with pytest.raises(Misconfigured, match="answered 400: unable to parse requirement"):
        await workloads.list_workloads(NS, "app in kfuse")


async def test_rbac_refusal_is_permission_denied(
    apiserver: FakeApiServer, workloads: KubernetesWorkloads
) -> None:
    apiserver.add_workload("Deployment", NS, "pinot-broker", replicas=1)
    apiserver.deny("patch", "deployments/scale", NS)
    with pytest.raises(PermissionDenied, match='cannot patch resource "deployments/scale"'):
        await workloads.scale(NS, DEPLOYMENT, "pinot-broker", 2)
    assert await workloads.get_replicas(NS, DEPLOYMENT, "pinot-broker") == 1
    apiserver.deny("list", "statefulsets", NS)
    with pytest.raises(PermissionDenied, match='cannot list resource "statefulsets"'):
        await workloads.list_workloads(NS)


async def test_refused_credentials_are_misconfigured(apiserver: FakeApiServer) -> None:
    apiserver.add_workload("Deployment", NS, "ui", replicas=1)
    connection = KubernetesConnection(host=apiserver.url, token="wrong")
    async with await KubernetesWorkloads.connect(connection) as scaler:
        with pytest.raises(Misconfigured, match="answered 401: Unauthorized"):
            await scaler.get_replicas(NS, DEPLOYMENT, "ui")


@pytest.mark.parametrize(
    ("code", "reason"),
    [(500, "InternalError"), (503, "ServiceUnavailable"), (429, "TooManyRequests")],
)
async def test_server_errors_are_unavailable(
    apiserver: FakeApiServer, workloads: KubernetesWorkloads, code: int, reason: str
) -> None:
    apiserver.add_workload("Deployment", NS, "ui", replicas=1)
    apiserver.fail_next(code, reason)
    with pytest.raises(Unavailable, match=f"answered {code}: injected {reason}"):
        await workloads.scale(NS, DEPLOYMENT, "ui", 2)
    await workloads.scale(NS, DEPLOYMENT, "ui", 2)
    assert await workloads.get_replicas(NS, DEPLOYMENT, "ui") == 2


async def test_a_conflict_is_resent_until_the_patch_lands(
    apiserver: FakeApiServer, workloads: KubernetesWorkloads
) -> None:
    apiserver.add_workload("StatefulSet", NS, "pinot-server", replicas=0)
    for _ in range(CONFLICT_ATTEMPTS - 1):
        apiserver.fail_next(409, "Conflict")
    await workloads.scale(NS, STATEFULSET, "pinot-server", 3)
    patches = [r for r in apiserver.requests if r.method == "PATCH"]
    assert len(patches) == CONFLICT_ATTEMPTS
    assert all(p.body == {"spec": {"replicas": 3}} for p in patches)
    assert apiserver.objects[("statefulsets", NS, "pinot-server")]["spec"]["replicas"] == 3


async def test_conflicts_beyond_the_bound_are_precondition_failed(
    apiserver: FakeApiServer, workloads: KubernetesWorkloads
) -> None:
    apiserver.add_workload("StatefulSet", NS, "pinot-server", replicas=0)
    for _ in range(CONFLICT_ATTEMPTS + 1):
        apiserver.fail_next(409, "Conflict")
    with pytest.raises(
        PreconditionFailed, match=f"injected Conflict \\({CONFLICT_ATTEMPTS} attempts"
    ):
        await workloads.scale(NS, STATEFULSET, "pinot-server", 3)
    assert len(apiserver.requests) == CONFLICT_ATTEMPTS
    assert apiserver.objects[("statefulsets", NS, "pinot-server")]["spec"]["replicas"] == 0


async def test_unreachable_api_server_is_unavailable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    connection = KubernetesConnection(host=f"http://127.0.0.1:{port}", token="t")
    async with await KubernetesWorkloads.connect(connection) as scaler:
        with pytest.raises(Unavailable, match="unreachable"):
            await scaler.list_workloads(NS)


async def test_hung_api_server_times_out_as_unavailable(apiserver: FakeApiServer) -> None:
    apiserver.delay = 30.0
    connection = KubernetesConnection(host=apiserver.url, token=apiserver.token, timeout=0.3)
    started = time.monotonic()
    async with await KubernetesWorkloads.connect(connection) as scaler:
        with pytest.raises(Unavailable):
            await scaler.get_replicas(NS, DEPLOYMENT, "ui")
    assert time.monotonic() - started < 5


async def test_kubeconfig_is_loaded(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.add_workload("StatefulSet", NS, "pg", replicas=2)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""
apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{apiserver.url}"}}}}]
users: [{{name: agent, user: {{token: "{apiserver.token}"}}}}]
contexts: [{{name: az1, context: {{cluster: fake, user: agent, namespace: {NS}}}}}]
current-context: az1
"""
    )
    before = kubeconfig.read_text()
    connection = KubernetesConnection(kubeconfig=str(kubeconfig))
    async with await KubernetesWorkloads.connect(connection) as scaler:
        assert await scaler.get_replicas(NS, STATEFULSET, "pg") == 2
    assert kubeconfig.read_text() == before
    with pytest.raises(Misconfigured, match="az9"):
        await KubernetesWorkloads.connect(
            KubernetesConnection(kubeconfig=str(kubeconfig), context="az9")
        )
    with pytest.raises(Misconfigured, match="no kubeconfig at"):
        await KubernetesWorkloads.connect(KubernetesConnection(kubeconfig=str(tmp_path / "no")))


async def test_closed_scaler_is_refused(connection: KubernetesConnection) -> None:
    scaler = await KubernetesWorkloads.connect(connection)
    await scaler.close()
    await scaler.close()
    with pytest.raises(RuntimeError, match="closed"):
        await scaler.get_replicas(NS, DEPLOYMENT, "ui")
