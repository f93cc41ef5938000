"""charts/az-agent rendered by the real Helm engine: for every store, with and without the
credentials secret, and with the az-service override; linted strictly; every object validated
against one Kubernetes version; the agent configuration it renders read back by
``az-agent config`` and compared with the values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chart import (
    CHART,
    CONFIG_MOUNT,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    ROOT,
    Rendered,
    chart_values,
    deep_merge,
    render,
)
from tests.deploy.chart_schema import chart_schema
from tests.deploy.test_image import CONFIG_PATH

TOKEN_FILE = "/var/run/az-agent/api-token/token"
CRDS = {"ServiceMonitor", "PrometheusRule"}

CASES: dict[str, dict[str, Any]] = {
    "s3-secret": {
        "global": {
            "cloudStorage": {
                "type": "s3",
                "useSecret": True,
                "secretName": "cloud-storage-secret",
                "s3": {"region": "eu-west-1", "bucket": "kfuse-dr-eu"},
            }
        },
        "az-service": {"config": {"zone": "az1", "backupIntervalMinutes": 30}},
    },
    "s3-irsa": {
        "global": {
            "cloudStorage": {
                "type": "s3",
                "useSecret": False,
                "s3": {"region": "us-west-2", "bucket": "dr-irsa"},
            }
        },
        "az-service": {
            "config": {"zone": "az2", "role": "standby"},
            "serviceAccount": {
                "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/az"}
            },
        },
    },
    "gcs-secret": {
        "global": {
            "cloudStorage": {"type": "gcs", "secretName": "gcs-key", "gcs": {"bucket": "dr-gcs"}}
        },
        "az-service": {"config": {"zone": "az1"}},
    },
    "gcs-workload-identity": {
        "global": {
            "cloudStorage": {"type": "gcs", "useSecret": False, "gcs": {"bucket": "dr-gcs"}}
        },
        "az-service": {
            "config": {"zone": "az1"},
            "serviceAccount": {
                "annotations": {"iam.gke.io/gcp-service-account": "az@p.iam.gserviceaccount.com"}
            },
        },
    },
    "azure-secret": {
        "global": {"cloudStorage": {"type": "azure", "azure": {"container": "dr-blob"}}},
        "az-service": {"config": {"zone": "az1"}},
    },
    "azure-managed-identity": {
        "global": {
            "cloudStorage": {
                "type": "azure",
                "useSecret": False,
                "azure": {
                    "container": "dr-blob",
                    "accountUrl": "https://acct.blob.core.windows.net",
                },
            }
        },
        "az-service": {
            "config": {"zone": "az1"},
            "podLabels": {"azure.workload.identity/use": "true"},
            "serviceAccount": {"annotations": {"azure.workload.identity/client-id": "0000"}},
        },
    },
    "az-service-override": {
        "global": {
            "cloudStorage": {
                "type": "s3",
                "useSecret": True,
                "secretName": "cloud-storage-secret",
                "s3": {"region": "us-east-1", "bucket": "kfuse-platform"},
            }
        },
        "az-service": {
            "config": {
                "zone": "az1",
                "cloudStorage": {
                    "type": "s3",
                    "useSecret": True,
                    "secretName": "az-service-storage-secret",
                    "s3": {"region": "us-east-2", "bucket": "az-service-bucket"},
                },
            }
        },
    },
    "override-to-ambient": {
        "global": {"cloudStorage": {"type": "gcs", "useSecret": True, "gcs": {"bucket": "dr-gcs"}}},
        "az-service": {"config": {"zone": "az1", "cloudStorage": {"useSecret": False}}},
    },
    "everything": {
        "global": {"orgId": "acme", "cloudStorage": {"type": "s3"}},
        "az-service": {
            "config": {
                "postgres": {"passwordSecret": "pg-secret", "databases": ["configdb"]},
                "pinot": {"authSecret": "pinot-auth", "tables": ["logs"]},
                "alertmanager": {
                    "url": "http://alertmanager:9093",
                    "tokenSecret": "am-token",
                    "matchers": [{"name": "cluster", "value": "kfuse"}],
                },
                "kubernetes": {"enabled": True, "sourceTokenSecret": "az1-token"},
                "automaticFailover": {"enabled": True, "sourceZone": "az1", "cooldownMinutes": 5},
                "standby": {"mode": "warm"},
                "coldStandby": {
                    "workloads": [{"kind": "StatefulSet", "name": "pinot-server", "replicas": 3}],
                    "scaleDownOnPause": True,
                },
                "retention": {"keepCheckpoints": 5},
            },
            "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        },
    },
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    return {name: render(values) for name, values in CASES.items()}


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[Any, ...]]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _at(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for key in path:
        assert isinstance(node, Mapping), path
        assert key in node, f"{'.'.join(path)} missing"
        node = node[key]
    return node


def _matches(actual: Any, expected: Any) -> bool:
    """Equal, where a mapping in ``expected`` may leave out keys (the agent's defaults)."""
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and _matches(actual[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(_matches(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return bool(actual == expected)


def _effective_values(case: Mapping[str, Any]) -> dict[str, Any]:
    return deep_merge(chart_values(), case)


def _agent_config(rendered: Rendered, tmp_path: Path) -> dict[str, Any]:
    """``az-agent config`` on the rendered ConfigMap, as a user would run it in the pod."""
    path = tmp_path / "config.yaml"
    path.write_text(rendered.agent_config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZ_AGENT__")}
    result = subprocess.run(
        [sys.executable, "-m", "az_agent.cli", "config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


# -- Helm: lint, schema --------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_lints_strictly(case: str) -> None:
    report = helm.lint(str(CHART), CASES[case], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []  # nothing above INFO


def test_schema_is_generated_from_the_agent_configuration() -> None:
    committed = json.loads((CHART / "values.schema.json").read_text())
    assert committed == chart_schema(), (
        "regenerate: .venv/bin/python -m tests.deploy.chart_schema > "
        "charts/az-agent/values.schema.json"
    )


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"az-service": {"config": {"zone": "az1", "backupIntervalMinutes": "60"}}}, "want number"),
        ({"az-service": {"config": {"zone": "az1", "backupIntervalMinute": 60}}}, "not allowed"),
        ({"global": {"cloudStorage": {"type": "s3", "s3": {"regoin": "x"}}}}, "not allowed"),
        ({"global": {"cloudStorage": {"type": "file"}}}, "cloudStorage/type"),
        ({"global": {"cloudStorage": {"useSecret": "yes"}}}, "want boolean"),
        ({"az-service": {"config": {"cloudStorage": {"gcs": {"bukket": "b"}}}}}, "not allowed"),
        ({"az-service": {"config": {"lease": {"ttlSeconds": 0}}}}, "ttlSeconds"),
        ({"az-service": {"config": {"standby": {"mode": "hot"}}}}, "standby/mode"),
        ({"az-service": {"replicas": 2}}, "not allowed"),
        ({"az-service": {"metrics": {"serviceMonitor": {"enabled": "true"}}}}, "want boolean"),
        ({"globals": {}}, "not allowed"),
    ],
)
def test_schema_rejects_wrong_types_and_unknown_keys(
    values: dict[str, Any], complaint: str
) -> None:
    values = deep_merge({"az-service": {"config": {"zone": "az1"}}}, values)
    with pytest.raises(helm.HelmError, match=complaint):
        render(values)


def test_a_zone_is_required_unless_it_can_be_derived() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"az-service\.config\.zone is required"):
        render({})


# -- Kubernetes objects ------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_object_is_valid_kubernetes(case: str, rendered: dict[str, Rendered]) -> None:
    objects = rendered[case].objects
    for obj in objects:
        if obj["kind"] in CRDS:
            continue  # kubernetes-validate has no schema for them: checked by shape below
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        namespaced = obj["kind"] not in ("ClusterRole", "ClusterRoleBinding")
        assert ("namespace" in obj["metadata"]) == namespaced, obj["metadata"]


def test_the_service_is_az_service_on_8080(rendered: dict[str, Rendered]) -> None:
    for case in rendered.values():
        service = case.one("Service", "az-service")
        assert service["spec"]["ports"] == [
            {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
        ]
        pod_labels = case.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert case.container["ports"][0]["name"] == "http"
        assert "port-forward svc/az-service 8081:8080" in case.notes


def test_two_replicas_probes_and_the_mounted_configuration(rendered: dict[str, Rendered]) -> None:
    case = rendered["s3-secret"]
    deployment = case.one("Deployment", "az-service")
    assert deployment["spec"]["replicas"] == 2
    container = case.container
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 8080
    # the image's entrypoint reads CONFIG_PATH: the ConfigMap key mounted there
    mounted = case.mounts()[CONFIG_MOUNT]["configMap"]["name"]
    assert Path(CONFIG_MOUNT) / "config.yaml" == Path(CONFIG_PATH)
    assert "config.yaml" in case.one("ConfigMap", mounted)["data"]
    assert "command" not in container  # the image's ENTRYPOINT runs
    pod = case.pod_spec
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _storage_of(values: Mapping[str, Any]) -> dict[str, Any]:
    effective = _effective_values(values)
    override = effective["az-service"]["config"].get("cloudStorage") or {}
    return deep_merge(effective["global"]["cloudStorage"], override)


@pytest.mark.parametrize("case", sorted(CASES))
def test_credentials_secret_mounted_only_with_use_secret(
    case: str, rendered: dict[str, Rendered]
) -> None:
    storage = _storage_of(CASES[case])
    mounts = rendered[case].mounts()
    secrets_dir = _effective_values(CASES[case])["az-service"]["config"]["secretsDir"]
    at = f"{secrets_dir}/{storage['secretName']}"
    if storage["useSecret"]:
        assert mounts[at]["secret"]["secretName"] == storage["secretName"]
    else:
        assert at not in mounts
    secret_mounts = {
        p for p, v in mounts.items() if "secret" in v and p.startswith(secrets_dir + "/")
    }
    expected = {at} if storage["useSecret"] else set()
    if case == "everything":
        names = ["pg-secret", "pinot-auth", "am-token", "az1-token"]
        expected |= {f"{secrets_dir}/{name}" for name in names}
    assert secret_mounts == expected


@pytest.mark.parametrize("case", ["s3-irsa", "gcs-workload-identity", "azure-managed-identity"])
def test_ambient_identity_through_the_service_account(
    case: str, rendered: dict[str, Rendered]
) -> None:
    account = rendered[case].one("ServiceAccount")
    assert (
        account["metadata"]["annotations"]
        == CASES[case]["az-service"]["serviceAccount"]["annotations"]
    )
    assert rendered[case].pod_spec["serviceAccountName"] == account["metadata"]["name"]
    labels = rendered[case].one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert CASES[case]["az-service"].get("podLabels", {}).items() <= labels.items()


def test_the_api_token_secret_is_generated_and_mounted_as_the_token_file(
    rendered: dict[str, Rendered],
) -> None:
    case = rendered["s3-secret"]
    secret = case.one("Secret", "az-service-api-token")
    assert len(secret["data"]["token"]) >= 48
    assert case.mounts()[str(Path(TOKEN_FILE).parent)]["secret"]["secretName"] == (
        "az-service-api-token"
    )
    assert (
        yaml.safe_load(case.agent_config_text)["az-service"]["config"]["http"]["tokenFile"]
        == TOKEN_FILE
    )
    assert "get secret az-service-api-token" in case.notes
    for call in ("/pause", "/activate?zone=", "/resume"):
        line = next(line for line in case.notes.splitlines() if call in line)
        assert "Authorization: Bearer $TOKEN" in line, line
    assert "curl http://localhost:8082/status" in case.notes
    # an existing secret instead: nothing generated, that one mounted
    other = render(
        deep_merge(CASES["s3-secret"], {"az-service": {"apiToken": {"existingSecret": "mine"}}})
    )
    assert other.find("Secret") == []
    assert other.mounts()[str(Path(TOKEN_FILE).parent)]["secret"]["secretName"] == "mine"


# -- the agent's configuration ------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_az_agent_config_reads_the_values(
    case: str, rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    printed = _agent_config(rendered[case], tmp_path)
    effective = _effective_values(CASES[case])
    service = printed["az-service"]["config"]
    expected_service = dict(effective["az-service"]["config"])
    expected_service.pop("cloudStorage", None)
    expected_service["http"] = {**expected_service["http"], "tokenFile": TOKEN_FILE}
    if not expected_service["zone"]:
        expected_service["zone"] = f"{effective['global']['orgId']}-{RELEASE}-{NAMESPACE}"
    for path, value in _leaves(expected_service):
        if value is not None:  # Helm drops null values; the agent has its own default
            assert _matches(_at(service, path), value), path
    # the az-service override wins for the agent, key by key
    for path, value in _leaves(_storage_of(CASES[case])):
        assert _at(service["cloudStorage"], path) == value, path


def test_the_values_hold_every_agent_key(tmp_path: Path) -> None:
    printed = _agent_config(render({"az-service": {"config": {"zone": "az1"}}}), tmp_path)
    values = chart_values()
    agent = {k: v for k, v in printed["az-service"]["config"].items() if k != "cloudStorage"}
    chart = {k: v for k, v in values["az-service"]["config"].items() if k != "cloudStorage"}
    assert {p for p, _ in _leaves(agent)} == {p for p, _ in _leaves(chart)}
    storage = {k: v for k, v in printed["global"]["cloudStorage"].items() if k != "file"}
    assert {p for p, _ in _leaves(storage)} == {
        p for p, _ in _leaves(values["global"]["cloudStorage"])
    }
    # and the chart's defaults are the agent's (the zone apart)
    for path, value in _leaves(chart):
        if path not in (("zone",), ("http", "tokenFile")):
            assert _at(agent, path) == value, path


# -- RBAC ---------------------------------------------------------------------------------


def _rules(path: str, kind: str = "Role") -> list[dict[str, Any]]:
    documents = yaml.safe_load_all((ROOT / path).read_text())
    role = next(d for d in documents if d and d["kind"] == kind)
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def test_no_rbac_and_no_api_token_when_nothing_needs_the_api(
    rendered: dict[str, Rendered],
) -> None:
    for name in ("s3-secret", "gcs-secret", "azure-secret", "az-service-override"):
        kinds = {o["kind"] for o in rendered[name].objects}
        assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}, name
        assert rendered[name].pod_spec["automountServiceAccountToken"] is False


def test_cold_standby_gets_the_scale_subresource(rendered: dict[str, Rendered]) -> None:
    case = rendered["everything"]
    role = case.one("Role", "az-service-cold-standby")
    assert role["rules"] == _rules("deploy/kubernetes/agent-role.yaml")
    binding = case.one("RoleBinding", "az-service-cold-standby")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "az-service", "namespace": NAMESPACE}
    ]
    assert case.pod_spec["automountServiceAccountToken"] is True
    elsewhere = render(
        deep_merge(
            CASES["everything"], {"az-service": {"config": {"coldStandby": {"namespace": "pinot"}}}}
        )
    )
    assert elsewhere.one("Role", "az-service-cold-standby")["metadata"]["namespace"] == "pinot"
    assert elsewhere.one("RoleBinding")["metadata"]["namespace"] == "pinot"


def test_namespace_pauses_get_services_proxy(rendered: dict[str, Rendered]) -> None:
    expected = _rules("deploy/kubernetes/agent-source-pause-role.yaml")
    cluster_role = rendered["everything"].one("ClusterRole")
    assert cluster_role["rules"] == expected
    narrowed = render(
        deep_merge(
            CASES["everything"],
            {"az-service": {"rbac": {"sourceNamespaces": ["kfuse-az1", "kfuse-az3"]}}},
        )
    )
    assert narrowed.find("ClusterRole") == []
    roles = narrowed.find("Role")
    proxies = [r for r in roles if r["rules"] == expected]
    assert sorted(r["metadata"]["namespace"] for r in proxies) == ["kfuse-az1", "kfuse-az3"]
    other_port = render(
        deep_merge(
            CASES["everything"],
            {"az-service": {"config": {"kubernetes": {"sourceService": "dr", "sourcePort": 9000}}}},
        )
    )
    assert other_port.one("ClusterRole")["rules"][0]["resourceNames"] == ["dr:9000"]


# -- monitoring -----------------------------------------------------------------------------


def test_service_monitor_scrapes_the_service(rendered: dict[str, Rendered]) -> None:
    assert rendered["s3-secret"].find("ServiceMonitor") == []
    case = rendered["everything"]
    monitor = case.one("ServiceMonitor", "az-service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = case.one("Service", "az-service")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"
        assert set(endpoint) <= {"port", "path", "interval", "scheme"}


def test_prometheus_rule_carries_the_project_rules(rendered: dict[str, Rendered]) -> None:
    assert rendered["s3-secret"].find("PrometheusRule") == []
    rule = rendered["everything"].one("PrometheusRule", "az-service")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"] == yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        for entry in group["rules"]:
            assert ("alert" in entry) != ("record" in entry)
            assert isinstance(entry["expr"], str | int)


def test_embedded_files_are_the_deploy_files() -> None:
    for name, target in (
        ("rules.yml", "deploy/prometheus/rules.yml"),
        ("az-agent.json", "deploy/grafana/az-agent.json"),
    ):
        link = CHART / "files" / name
        assert link.read_bytes() == (ROOT / target).read_bytes(), name


def test_grafana_dashboard_config_map_for_the_sidecar(rendered: dict[str, Rendered]) -> None:
    config_map = rendered["s3-secret"].one("ConfigMap", "az-service-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["az-agent.json"])
    assert dashboard == json.loads((ROOT / "deploy/grafana/az-agent.json").read_text())
    off = {"az-service": {"metrics": {"grafanaDashboard": {"enabled": False}}}}
    assert (
        render(deep_merge(CASES["s3-secret"], off)).find("ConfigMap", "az-service-dashboard") == []
    )


def test_tls_secret_serves_https(tmp_path: Path) -> None:
    values = deep_merge(
        CASES["everything"],
        {
            "az-service": {
                "tls": {"secretName": "az-service-tls"},
                "extraVolumes": [{"name": "ca", "configMap": {"name": "pinot-ca"}}],
                "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/pinot-ca"}],
                "config": {"pinot": {"caFile": "/etc/pinot-ca/ca.crt"}},
            }
        },
    )
    case = render(values)
    for obj in case.objects:
        if obj["kind"] not in CRDS:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    http = _agent_config(case, tmp_path)["az-service"]["config"]["http"]
    mounts = case.mounts()
    tls_dir = str(Path(http["tlsCertFile"]).parent)
    assert Path(http["tlsKeyFile"]).parent == Path(tls_dir)
    assert mounts[tls_dir]["secret"]["secretName"] == "az-service-tls"
    items = {i["path"] for i in mounts[tls_dir]["secret"]["items"]}
    assert items == {Path(http["tlsCertFile"]).name, Path(http["tlsKeyFile"]).name}
    assert mounts["/etc/pinot-ca"] == {"name": "ca", "configMap": {"name": "pinot-ca"}}
    for probe in ("livenessProbe", "readinessProbe"):
        assert case.container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert case.one("ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "https"
    assert "curl -k https://localhost:8082/status" in case.notes
