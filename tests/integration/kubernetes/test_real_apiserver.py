"""The scale driver against a real kube-apiserver 1.20 (tests/servers/kubernetes.py).

The fake API server of test_workloads.py checks the exact requests sent; these check that a real
server, its controllers and its RBAC answer the way the driver expects: the scale subresource
(whose spec.replicas is omitted at zero), label selectors, list paging, the error statuses and
their messages, and concurrent scales that never conflict (a merge patch carries no
resourceVersion, so the last writer wins).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from az_agent.drivers.errors import Misconfigured, NotFound, PermissionDenied, Unavailable
from az_agent.drivers.kubernetes.base import Workload, WorkloadKind
from az_agent.drivers.kubernetes.client import KubernetesConnection, open_api_client
from az_agent.drivers.kubernetes.service_proxy import KubernetesServiceProxy
from az_agent.drivers.kubernetes.workloads import KubernetesWorkloads
from tests.servers.kubernetes import KubeApiError, KubernetesApiServer
from tests.servers.tls import self_signed

DEPLOYMENT = WorkloadKind.DEPLOYMENT
STATEFULSET = WorkloadKind.STATEFULSET
PART_OF = {"app.kubernetes.io/part-of": "kfuse"}


@pytest.fixture
async def ns(kube_apiserver: KubernetesApiServer) -> str:
    return await kube_apiserver.create_namespace()


async def _scaler(connection: KubernetesConnection, page_size: int = 500) -> KubernetesWorkloads:
    return KubernetesWorkloads(await open_api_client(connection), page_size=page_size)


async def test_deployment_scales_up_gets_ready_and_back_to_zero(
    kube_apiserver: KubernetesApiServer, ns: str
) -> None:
    await kube_apiserver.create_deployment(ns, "pinot-broker", replicas=0, labels=PART_OF)
    async with await _scaler(kube_apiserver.admin_connection()) as scaler:
        # At zero the real Scale omits spec.replicas; the driver still reads 0.
        assert await scaler.get_replicas(ns, DEPLOYMENT, "pinot-broker") == 0
        await scaler.scale(ns, DEPLOYMENT, "pinot-broker", 3)
        assert await scaler.get_replicas(ns, DEPLOYMENT, "pinot-broker") == 3
        stored = await kube_apiserver.get_workload(DEPLOYMENT, ns, "pinot-broker")
        assert stored["spec"]["replicas"] == 3
        [listed] = await scaler.list_workloads(ns)
        assert (listed.replicas, listed.ready_replicas) == (3, 0)

        await kube_apiserver.mark_ready(DEPLOYMENT, ns, "pinot-broker")
        assert await scaler.list_workloads(ns) == [
            Workload(ns, DEPLOYMENT, "pinot-broker", 3, 3, PART_OF)
        ]

        await scaler.scale(ns, DEPLOYMENT, "pinot-broker", 0)
        assert await scaler.get_replicas(ns, DEPLOYMENT, "pinot-broker") == 0
        await kube_apiserver.mark_ready(DEPLOYMENT, ns, "pinot-broker")
        [listed] = await scaler.list_workloads(ns)
        assert (listed.replicas, listed.ready_replicas) == (0, 0)


async def test_statefulset_scales_and_repeating_is_a_no_op(
    kube_apiserver: KubernetesApiServer, ns: str
) -> None:
    await kube_apiserver.create_statefulset(ns, "pinot-server", replicas=0)
    async with await _scaler(kube_apiserver.admin_connection()) as scaler:
        await scaler.scale(ns, STATEFULSET, "pinot-server", 2)
        assert await scaler.get_replicas(ns, STATEFULSET, "pinot-server") == 2
        ready = await kube_apiserver.mark_ready(STATEFULSET, ns, "pinot-server")
        assert ready["status"]["readyReplicas"] == 2
        version = ready["metadata"]["resourceVersion"]
        await scaler.scale(ns, STATEFULSET, "pinot-server", 2)
        again = await kube_apiserver.get_workload(STATEFULSET, ns, "pinot-server")
        assert again["metadata"]["resourceVersion"] == version
        [listed] = await scaler.list_workloads(ns)
        assert (listed.kind, listed.replicas, listed.ready_replicas) == (STATEFULSET, 2, 2)


async def test_concurrent_scales_never_conflict(
    kube_apiserver: KubernetesApiServer, ns: str
) -> None:
    """No resourceVersion in the merge patch: racing writers (another scaler, an edit of the
    workload itself) never get a 409; the last scale recorded wins."""
    await kube_apiserver.create_deployment(ns, "ui", replicas=1)
    relabel = {"metadata": {"labels": {"touched": "yes"}}}
    async with await _scaler(kube_apiserver.admin_connection()) as scaler:
        await asyncio.gather(
            *(scaler.scale(ns, DEPLOYMENT, "ui", n) for n in range(1, 9)),
            *(
                kube_apiserver.request(
                    "PATCH",
                    f"/apis/apps/v1/namespaces/{ns}/deployments/ui",
                    relabel,
                    content_type="application/merge-patch+json",
                )
                for _ in range(4)
            ),
        )
        assert 1 <= await scaler.get_replicas(ns, DEPLOYMENT, "ui") <= 8
        await scaler.scale(ns, DEPLOYMENT, "ui", 5)
        assert await scaler.get_replicas(ns, DEPLOYMENT, "ui") == 5


async def _seed(kube_apiserver: KubernetesApiServer, ns: str, elsewhere: str) -> None:
    create_d, create_s = kube_apiserver.create_deployment, kube_apiserver.create_statefulset
    await asyncio.gather(
        *(
            create_d(ns, n, 2, PART_OF)
            for n in ("pinot-broker", "pinot-controller", "pinot-minion")
        ),
        create_d(ns, "ui", 1, {**PART_OF, "tier": "ui"}),
        create_d(ns, "other", 1),
        create_s(ns, "pinot-server", 0, PART_OF),
        create_s(ns, "kafka", 3, PART_OF),
        create_s(elsewhere, "pg", 1, PART_OF),
    )


async def test_list_workloads_filters_by_selector_and_follows_pages(
    kube_apiserver: KubernetesApiServer, ns: str
) -> None:
    elsewhere = await kube_apiserver.create_namespace()
    await _seed(kube_apiserver, ns, elsewhere)
    connection = kube_apiserver.admin_connection()
    async with await _scaler(connection) as scaler:
        found = await scaler.list_workloads(ns, "app.kubernetes.io/part-of=kfuse,tier!=ui")
        assert [(w.kind, w.name, w.replicas) for w in found] == [
            (DEPLOYMENT, "pinot-broker", 2),
            (DEPLOYMENT, "pinot-controller", 2),
            (DEPLOYMENT, "pinot-minion", 2),
            (STATEFULSET, "kafka", 3),
            (STATEFULSET, "pinot-server", 0),
        ]
        assert found[0].labels == PART_OF
        assert len(await scaler.list_workloads(ns)) == 7
        assert await scaler.list_workloads("no-such-namespace") == []
    # 4 deployments match: two pages of 2 through the server's real continue tokens.
    async with await _scaler(connection, page_size=2) as paged:
        everything = await paged.list_workloads(ns, "app.kubernetes.io/part-of")
    assert [w.name for w in everything] == [
        "pinot-broker",
        "pinot-controller",
        "pinot-minion",
        "ui",
        "kafka",
        "pinot-server",
    ]


async def test_errors_of_the_real_server(kube_apiserver: KubernetesApiServer, ns: str) -> None:
    async with await _scaler(kube_apiserver.admin_connection()) as scaler:
        # Kubernetes 1.20 names the subresource only for a read of a Deployment's scale (the
        # fake API server answers the same).
        not_found = [
            (scaler.get_replicas(ns, DEPLOYMENT, "nope"), "deployments/scale.apps"),
            (scaler.scale(ns, DEPLOYMENT, "nope", 1), "deployments.apps"),
            (scaler.get_replicas(ns, STATEFULSET, "nope"), "statefulsets.apps"),
            (scaler.scale(ns, STATEFULSET, "nope", 1), "statefulsets.apps"),
        ]
        for call, resource in not_found:
            with pytest.raises(NotFound, match=re.escape(f'answered 404: {resource} "nope" not')):
                await call
        with pytest.raises(Misconfigured, match="answered 400: unable to parse requirement"):
            await scaler.list_workloads(ns, "app in kfuse")
    wrong = kube_apiserver.connection("not-a-token")
    async with await _scaler(wrong) as scaler:
        with pytest.raises(Misconfigured, match="answered 401: Unauthorized"):
            await scaler.get_replicas(ns, DEPLOYMENT, "ui")


async def test_service_proxy_refusals_of_the_real_server(
    kube_apiserver: KubernetesApiServer, ns: str
) -> None:
    """What the fake API server answers on the proxy paths, as the real one does (it cannot
    proxy to a loopback endpoint, so a reply from the target is the fake's job)."""
    await kube_apiserver.request(
        "POST",
        f"/api/v1/namespaces/{ns}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "az-service"},
            "spec": {"ports": [{"port": 8080}], "selector": {"app": "none"}},
        },
    )
    connection = kube_apiserver.admin_connection()
    async with await KubernetesServiceProxy.connect(connection) as proxy:
        with pytest.raises(NotFound, match=re.escape('answered 404: services "nope" not found')):
            await proxy.pause_agent(ns, service="nope")
        no_port = 'answered 503: no service port 9999 found for service "az-service"'
        with pytest.raises(Unavailable, match=re.escape(no_port)):
            await proxy.pause_agent(ns, port=9999)
        # Until the endpoints controller has made the (empty) Endpoints object, the real server
        # answers 404 for the service; then 503.
        await _wait_for_endpoints(kube_apiserver, ns, "az-service")
        no_endpoints = 'answered 503: no endpoints available for service "az-service"'
        with pytest.raises(Unavailable, match=re.escape(no_endpoints)):
            await proxy.pause_agent(ns)


async def _wait_for_endpoints(kube_apiserver: KubernetesApiServer, ns: str, name: str) -> None:
    for _ in range(100):
        try:
            await kube_apiserver.request("GET", f"/api/v1/namespaces/{ns}/endpoints/{name}")
            return
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError(f"no Endpoints object for {ns}/{name} after 10 s")


async def test_service_account_without_rbac_is_permission_denied(
    kube_apiserver: KubernetesApiServer, ns: str
) -> None:
    await kube_apiserver.create_deployment(ns, "pinot-broker", replicas=1)
    await kube_apiserver.create_service_account(ns, "az-agent")
    token = await kube_apiserver.token_for(ns, "az-agent")
    user = f"system:serviceaccount:{ns}:az-agent"
    async with await _scaler(kube_apiserver.connection(token)) as scaler:
        with pytest.raises(
            PermissionDenied,
            match=re.escape(f'User "{user}" cannot patch resource "deployments/scale"'),
        ):
            await scaler.scale(ns, DEPLOYMENT, "pinot-broker", 2)
        with pytest.raises(PermissionDenied, match='cannot get resource "deployments/scale"'):
            await scaler.get_replicas(ns, DEPLOYMENT, "pinot-broker")
        with pytest.raises(PermissionDenied, match='cannot list resource "deployments"'):
            await scaler.list_workloads(ns)
    assert (await kube_apiserver.get_workload(DEPLOYMENT, ns, "pinot-broker"))["spec"][
        "replicas"
    ] == 1


async def test_kubeconfig_with_tls_is_loaded(
    kube_apiserver: KubernetesApiServer, ns: str, tmp_path: Path
) -> None:
    """The kubeconfig path of the driver, with the CA verified against a real TLS server."""
    await kube_apiserver.create_statefulset(ns, "pg", replicas=2)
    connection = KubernetesConnection(kubeconfig=kube_apiserver.kubeconfig)
    async with await KubernetesWorkloads.connect(connection) as scaler:
        assert await scaler.get_replicas(ns, STATEFULSET, "pg") == 2
    # The same server behind an unrelated CA is refused, not silently trusted.
    other_ca, _ = self_signed(tmp_path, "someone-else")
    untrusted = KubernetesConnection(host=kube_apiserver.url, token="t", ca_file=str(other_ca))
    async with await KubernetesWorkloads.connect(untrusted) as scaler:
        with pytest.raises(Unavailable, match="certificate verify failed"):
            await scaler.get_replicas(ns, STATEFULSET, "pg")
