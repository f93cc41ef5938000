"""The Roles of deploy/kubernetes/ on a real API server: what the agent needs, and nothing more.

``kubectl auth can-i --as=system:serviceaccount:<ns>:az-agent`` asks the server's RBAC
authorizer, then the drivers run with a real token of that service account, so a rule the code
needs but the Role lacks (or a resource name that does not match the URL) fails here.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from az_agent.drivers.errors import PermissionDenied, Unavailable
from az_agent.drivers.kubernetes.base import WorkloadKind
from az_agent.drivers.kubernetes.service_proxy import KubernetesServiceProxy
from az_agent.drivers.kubernetes.workloads import KubernetesWorkloads
from tests.servers.kubernetes import KubernetesApiServer, manifest

DEPLOY = Path(__file__).parents[3] / "deploy" / "kubernetes"
COLD_STANDBY_ROLE = DEPLOY / "agent-role.yaml"
SOURCE_PAUSE_ROLE = DEPLOY / "agent-source-pause-role.yaml"
SA = "az-agent"

# (verb, resource, subresource, allowed) for the cold-standby Role in the agent's namespace.
COLD_STANDBY = [
    ("get", "deployments.apps", "", True),
    ("list", "deployments.apps", "", True),
    ("get", "statefulsets.apps", "", True),
    ("list", "statefulsets.apps", "", True),
    ("get", "deployments.apps", "scale", True),
    ("patch", "deployments.apps", "scale", True),
    ("update", "deployments.apps", "scale", True),
    ("get", "statefulsets.apps", "scale", True),
    ("patch", "statefulsets.apps", "scale", True),
    ("update", "statefulsets.apps", "scale", True),
    # Never the workload itself (its pod template), never anything else.
    ("patch", "deployments.apps", "", False),
    ("update", "deployments.apps", "", False),
    ("patch", "statefulsets.apps", "", False),
    ("delete", "deployments.apps", "", False),
    ("delete", "statefulsets.apps", "", False),
    ("create", "deployments.apps", "", False),
    ("watch", "deployments.apps", "", False),
    ("patch", "deployments.apps", "status", False),
    ("get", "secrets", "", False),
    ("list", "pods", "", False),
    ("delete", "pods", "", False),
    ("patch", "replicasets.apps", "scale", False),
    ("create", "services", "proxy", False),
]


async def _agent(kube_apiserver: KubernetesApiServer, ns: str) -> None:
    await kube_apiserver.create_service_account(ns, SA)


@pytest.fixture
async def agent_ns(kube_apiserver: KubernetesApiServer) -> str:
    """A namespace with the az-agent service account and the cold-standby Role bound to it."""
    ns = await kube_apiserver.create_namespace()
    await _agent(kube_apiserver, ns)
    await kube_apiserver.apply(manifest(COLD_STANDBY_ROLE, ns))
    return ns


async def test_cold_standby_role_grants_exactly_the_scale_verbs(
    kube_apiserver: KubernetesApiServer, agent_ns: str
) -> None:
    other = await kube_apiserver.create_namespace()
    # In the agent's namespace as the table says; in any other namespace, nothing.
    cases = [
        (ns, verb, res, sub, ok and ns == agent_ns)
        for ns in (agent_ns, other)
        for verb, res, sub, ok in COLD_STANDBY
    ]
    answers = await asyncio.gather(
        *(
            kube_apiserver.can_i(
                verb, res, namespace=ns, service_account=SA, sa_namespace=agent_ns, subresource=sub
            )
            for ns, verb, res, sub, _ in cases
        )
    )
    wrong = [case for case, got in zip(cases, answers, strict=True) if got != case[-1]]
    assert not wrong, (
        f"kubectl auth can-i disagrees with (ns, verb, resource, sub, expected): {wrong}"
    )


async def test_the_scale_driver_works_with_the_roles_token_alone(
    kube_apiserver: KubernetesApiServer, agent_ns: str
) -> None:
    """Every call the cold standby makes, with a real token of the bound service account."""
    await kube_apiserver.create_deployment(agent_ns, "pinot-broker", replicas=0)
    await kube_apiserver.create_statefulset(agent_ns, "pinot-server", replicas=0)
    token = await kube_apiserver.token_for(agent_ns, SA)
    async with await KubernetesWorkloads.connect(kube_apiserver.connection(token)) as scaler:
        assert [w.name for w in await scaler.list_workloads(agent_ns)] == [
            "pinot-broker",
            "pinot-server",
        ]
        await scaler.scale(agent_ns, WorkloadKind.DEPLOYMENT, "pinot-broker", 2)
        await scaler.scale(agent_ns, WorkloadKind.STATEFULSET, "pinot-server", 1)
        assert await scaler.get_replicas(agent_ns, WorkloadKind.STATEFULSET, "pinot-server") == 1
        await kube_apiserver.mark_ready(WorkloadKind.STATEFULSET, agent_ns, "pinot-server")
        assert [w.ready_replicas for w in await scaler.list_workloads(agent_ns)] == [0, 1]
        # The same token in a namespace whose Role is not bound to it: refused.
        other = await kube_apiserver.create_namespace()
        await kube_apiserver.create_deployment(other, "pinot-broker", replicas=0)
        with pytest.raises(PermissionDenied, match='cannot patch resource "deployments/scale"'):
            await scaler.scale(other, WorkloadKind.DEPLOYMENT, "pinot-broker", 1)


@pytest.fixture
async def zones(kube_apiserver: KubernetesApiServer) -> tuple[str, str]:
    """(source, activating) namespaces, the source-pause Role in the source bound to the
    activating zone's agent, and a Service az-service:8080 in the source with no endpoints."""
    source, activating = await asyncio.gather(
        kube_apiserver.create_namespace(), kube_apiserver.create_namespace()
    )
    await asyncio.gather(_agent(kube_apiserver, source), _agent(kube_apiserver, activating))
    await kube_apiserver.apply(manifest(SOURCE_PAUSE_ROLE, source, subject_namespace=activating))
    for name, port in (("az-service", 8080), ("pinot-controller", 9000)):
        await kube_apiserver.request(
            "POST",
            f"/api/v1/namespaces/{source}/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {"ports": [{"port": port}], "selector": {"app": name}},
            },
        )
    return source, activating


async def test_source_pause_role_grants_only_the_proxy_to_the_source_agent(
    kube_apiserver: KubernetesApiServer, zones: tuple[str, str]
) -> None:
    source, activating = zones

    async def can(verb: str, name: str, ns: str = source, sa_ns: str = activating) -> bool:
        return await kube_apiserver.can_i(
            verb,
            "services",
            namespace=ns,
            service_account=SA,
            sa_namespace=sa_ns,
            subresource="proxy",
            name=name,
        )

    assert await can("create", "az-service:8080")
    refused = {
        "get": await can("get", "az-service:8080"),
        "other service": await can("create", "pinot-controller:9000"),
        "other port": await can("create", "az-service:9090"),
        "activating namespace": await can("create", "az-service:8080", ns=activating),
        "source's own agent": await can("create", "az-service:8080", sa_ns=source),
        "services": await kube_apiserver.can_i(
            "get", "services", namespace=source, service_account=SA, sa_namespace=activating
        ),
    }
    assert not any(refused.values()), refused


async def test_pause_through_the_real_proxy_is_authorized_by_the_role(
    kube_apiserver: KubernetesApiServer, zones: tuple[str, str]
) -> None:
    """With the activating agent's token, the real server lets the pause through RBAC and then
    finds no endpoint (503, as the fake API server answers too); anything else is a 403."""
    source, activating = zones
    token = await kube_apiserver.token_for(activating, SA)
    async with await KubernetesServiceProxy.connect(kube_apiserver.connection(token)) as proxy:
        await proxy.ping()
        no_endpoints = 'answered 503: no endpoints available for service "az-service"'
        with pytest.raises(Unavailable, match=re.escape(no_endpoints)):
            await proxy.pause_agent(source)
        user = f"system:serviceaccount:{activating}:{SA}"
        for ns, service, port in (
            (source, "pinot-controller", 9000),
            (activating, "az-service", 8080),
        ):
            forbidden = (
                f'answered 403: services "{service}:{port}" is forbidden: User "{user}" cannot '
                f'create resource "services/proxy" in API group "" in the namespace "{ns}"'
            )
            with pytest.raises(PermissionDenied, match=re.escape(forbidden)):
                await proxy.pause_agent(ns, service=service, port=port)
