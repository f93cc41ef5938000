"""The rendered chart applied to a real Kubernetes API server (1.20, tests/servers/kubernetes.py):
every object is accepted (kubectl validates against the server's schema), and the service
account gets exactly the RBAC of what is enabled, checked with ``kubectl auth can-i`` and with
the agent's own scale driver on the service account's token."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import helm_python as helm
import yaml

from az_agent.drivers.kubernetes.base import WorkloadKind
from az_agent.drivers.kubernetes.workloads import KubernetesWorkloads
from tests.deploy.chart import CHART, RELEASE, Rendered, deep_merge, render
from tests.deploy.test_chart import CASES, CRDS
from tests.servers.kubernetes import KubernetesApiServer

SA = "az-service"


async def _install(kube: KubernetesApiServer, values: dict[str, Any], namespace: str) -> Rendered:
    """What ``helm install`` would create: the rendered objects, applied (no CRDs here)."""
    rendered = render(values, namespace=namespace)
    objects = [o for o in rendered.objects if o["kind"] not in CRDS]
    await kube.apply(yaml.safe_dump_all(objects))
    return rendered


async def _answers(
    kube: KubernetesApiServer, sa_namespace: str, checks: dict[str, tuple[str, str, str, str, str]]
) -> dict[str, bool]:
    """label -> can-i for (verb, resource, subresource, name, namespace)."""
    results = await asyncio.gather(
        *(
            kube.can_i(
                verb,
                resource,
                namespace=namespace,
                service_account=SA,
                sa_namespace=sa_namespace,
                subresource=subresource,
                name=name,
            )
            for verb, resource, subresource, name, namespace in checks.values()
        )
    )
    return dict(zip(checks, results, strict=True))


async def test_every_case_applies_and_nothing_is_granted_without_a_need(
    kube_apiserver: KubernetesApiServer,
) -> None:
    for case in ("s3-secret", "gcs-workload-identity", "azure-managed-identity"):
        ns = await kube_apiserver.create_namespace()
        await _install(kube_apiserver, CASES[case], ns)
        deployment = await kube_apiserver.kubectl(
            "get", "deployment", "az-service", "-n", ns, "-o", "jsonpath={.spec.replicas}"
        )
        assert deployment.stdout == "2"
        answers = await _answers(
            kube_apiserver,
            ns,
            {
                "scale": ("patch", "deployments.apps", "scale", "", ns),
                "list": ("list", "statefulsets.apps", "", "", ns),
                "proxy": ("create", "services", "proxy", "az-service:8080", ns),
            },
        )
        assert not any(answers.values()), (case, answers)


async def test_cold_standby_and_namespace_pauses_get_exactly_their_rules(
    kube_apiserver: KubernetesApiServer,
) -> None:
    ns, source, other = await asyncio.gather(*(kube_apiserver.create_namespace() for _ in range(3)))
    values = deep_merge(
        CASES["everything"], {"az-service": {"rbac": {"sourceNamespaces": [source]}}}
    )
    await _install(kube_apiserver, values, ns)
    answers = await _answers(
        kube_apiserver,
        ns,
        {
            "patch deployments/scale": ("patch", "deployments.apps", "scale", "", ns),
            "update statefulsets/scale": ("update", "statefulsets.apps", "scale", "", ns),
            "list statefulsets": ("list", "statefulsets.apps", "", "", ns),
            "proxy to the source agent": ("create", "services", "proxy", "az-service:8080", source),
        },
    )
    assert all(answers.values()), answers
    refused = await _answers(
        kube_apiserver,
        ns,
        {
            "patch deployments": ("patch", "deployments.apps", "", "", ns),
            "delete statefulsets": ("delete", "statefulsets.apps", "", "", ns),
            "scale elsewhere": ("patch", "deployments.apps", "scale", "", other),
            "create pods": ("create", "pods", "", "", ns),
            "read secrets": ("get", "secrets", "", "", ns),
            "proxy elsewhere": ("create", "services", "proxy", "az-service:8080", other),
            "proxy to another service": ("create", "services", "proxy", "pinot:9000", source),
        },
    )
    assert not any(refused.values()), refused
    # the agent's own driver, on the token of the chart's service account
    await kube_apiserver.create_statefulset(ns, "pinot-server", replicas=0)
    token = await kube_apiserver.token_for(ns, SA)
    async with await KubernetesWorkloads.connect(kube_apiserver.connection(token)) as workloads:
        await workloads.scale(ns, WorkloadKind.STATEFULSET, "pinot-server", 3)
        assert await workloads.get_replicas(ns, WorkloadKind.STATEFULSET, "pinot-server") == 3


async def test_without_source_namespaces_the_proxy_is_granted_cluster_wide(
    kube_apiserver: KubernetesApiServer,
) -> None:
    ns, other = await asyncio.gather(
        kube_apiserver.create_namespace(), kube_apiserver.create_namespace()
    )
    await _install(kube_apiserver, CASES["everything"], ns)
    answers = await _answers(
        kube_apiserver,
        ns,
        {
            "proxy to az-service:8080": ("create", "services", "proxy", "az-service:8080", other),
            "proxy to another port": ("create", "services", "proxy", "az-service:9090", other),
            "get services": ("get", "services", "", "", other),
        },
    )
    assert answers == {
        "proxy to az-service:8080": True,
        "proxy to another port": False,
        "get services": False,
    }


def _helm(kube: KubernetesApiServer, namespace: str) -> helm.Config:
    return helm.Config(kubeconfig_path=kube.kubeconfig, namespace=namespace)


async def _token(kube: KubernetesApiServer, namespace: str) -> str:
    result = await kube.kubectl(
        "get", "secret", "az-service-api-token", "-n", namespace, "-o", "jsonpath={.data.token}"
    )
    return base64.b64decode(result.stdout).decode()


async def test_helm_install_and_upgrade_keep_the_generated_token(
    kube_apiserver: KubernetesApiServer,
) -> None:
    """A real ``helm install`` / ``upgrade`` / ``uninstall`` (the Helm v4 engine against the API
    server): the token generated at install survives an upgrade (``lookup``) and a reinstall
    (the Secret is kept), so the other zone's copy of it stays valid."""
    ns = await kube_apiserver.create_namespace()
    values = CASES["s3-secret"]

    def install() -> dict[str, Any]:
        with _helm(kube_apiserver, ns) as config:
            release: dict[str, Any] = config.install(str(CHART), RELEASE, values, namespace=ns)
            return release

    def upgrade(changed: dict[str, Any]) -> None:
        with _helm(kube_apiserver, ns) as config:
            config.upgrade(str(CHART), RELEASE, changed, namespace=ns)

    def uninstall() -> None:
        with _helm(kube_apiserver, ns) as config:
            config.uninstall(RELEASE)

    release = await asyncio.to_thread(install)
    assert release["status"] == "deployed"
    assert "port-forward svc/az-service 8081:8080" in release["notes"]
    token = await _token(kube_apiserver, ns)
    assert len(token) == 48
    changed = deep_merge(values, {"az-service": {"config": {"backupIntervalMinutes": 15}}})
    await asyncio.to_thread(upgrade, changed)
    assert await _token(kube_apiserver, ns) == token
    config_map = await kube_apiserver.kubectl(
        "get", "configmap", "az-service-config", "-n", ns, "-o", "jsonpath={.data.config\\.yaml}"
    )
    assert yaml.safe_load(config_map.stdout)["az-service"]["config"]["backupIntervalMinutes"] == 15
    await asyncio.to_thread(uninstall)
    assert await _token(kube_apiserver, ns) == token  # helm.sh/resource-policy: keep
    await asyncio.to_thread(install)
    assert await _token(kube_apiserver, ns) == token
