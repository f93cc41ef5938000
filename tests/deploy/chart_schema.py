"""Generates charts/az-agent/values.schema.json from the agent's own configuration models, so
the chart accepts exactly the keys and types ``az-agent config`` accepts (plus the chart's own
knobs beside ``az-service.config``). ``tests/deploy/test_chart.py`` checks that the committed
file is what this prints; after a configuration change run:

    .venv/bin/python -m tests.deploy.chart_schema > charts/az-agent/values.schema.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from az_agent.agent.config import ServiceConfig
from az_agent.drivers.storage.config import CloudStorageSettings

CHART_STORAGE_TYPES = ["s3", "gcs", "azure"]
"""The stores a chart can use (``file`` is for local stacks)."""

Schema = dict[str, Any]


def _inline(node: Any, defs: Schema) -> Any:
    """Resolve every ``$ref`` into ``$defs`` in place of the reference; drop titles."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].removeprefix("#/$defs/")]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    result: Schema = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "default":
            result[key] = value
        elif key == "properties":
            result[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        else:
            result[key] = _inline(value, defs)
    return result


def _model_schema(model: type[ServiceConfig] | type[CloudStorageSettings]) -> Schema:
    raw = model.model_json_schema(by_alias=True)
    result: Schema = _inline(raw, raw.get("$defs", {}))
    return result


def _storage(required: bool) -> Schema:
    schema = _model_schema(CloudStorageSettings)
    del schema["properties"]["file"]
    schema["properties"]["type"]["enum"] = CHART_STORAGE_TYPES
    if not required:
        schema.pop("required", None)
    return schema


def _free_object(description: str) -> Schema:
    return {"type": "object", "description": description}


def _strict(properties: Schema, description: str = "") -> Schema:
    schema: Schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if description:
        schema["description"] = description
    return schema


def _enabled_with_labels(description: str, **extra: Schema) -> Schema:
    return _strict(
        {
            "enabled": {"type": "boolean"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            **extra,
        },
        description,
    )


def chart_schema() -> Schema:
    config = _model_schema(ServiceConfig)
    config["properties"]["cloudStorage"] = {
        "anyOf": [_storage(required=False), {"type": "null"}],
        "description": "Merged over global.cloudStorage; wins for the agent.",
    }
    string = {"type": "string"}
    string_map = {"type": "object", "additionalProperties": string}
    service = _strict(
        {
            "config": config,
            "replicaCount": {"type": "integer", "minimum": 0},
            "image": _strict(
                {
                    "repository": {"type": "string", "minLength": 1},
                    "tag": string,
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                }
            ),
            "imagePullSecrets": {"type": "array", "items": {"type": "object"}},
            "logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
            "apiToken": _strict(
                {"enabled": {"type": "boolean"}, "existingSecret": string},
                "The bearer token for POSTs, mounted as http.tokenFile.",
            ),
            "tls": _strict(
                {"secretName": string},
                "A kubernetes.io/tls Secret mounted as http.tlsCertFile and tlsKeyFile.",
            ),
            "serviceAccount": _strict(
                {"create": {"type": "boolean"}, "name": string, "annotations": string_map}
            ),
            "rbac": _strict(
                {
                    "create": {"type": "boolean"},
                    "sourceNamespaces": {"type": "array", "items": string},
                }
            ),
            "service": _strict(
                {
                    "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                    "annotations": string_map,
                }
            ),
            "podAnnotations": string_map,
            "podLabels": string_map,
            "resources": _free_object("Container resources (Kubernetes ResourceRequirements)."),
            "nodeSelector": string_map,
            "tolerations": {"type": "array", "items": {"type": "object"}},
            "affinity": _free_object("Pod affinity (Kubernetes Affinity)."),
            "extraEnv": {"type": "array", "items": {"type": "object"}},
            "extraVolumes": {"type": "array", "items": {"type": "object"}},
            "extraVolumeMounts": {"type": "array", "items": {"type": "object"}},
            "metrics": _strict(
                {
                    "serviceMonitor": _enabled_with_labels(
                        "A prometheus-operator ServiceMonitor.", interval=string
                    ),
                    "prometheusRule": _enabled_with_labels(
                        "A PrometheusRule with deploy/prometheus/rules.yml."
                    ),
                    "grafanaDashboard": _enabled_with_labels(
                        "A ConfigMap with deploy/grafana/az-agent.json, labelled for the "
                        "Grafana dashboard sidecar."
                    ),
                }
            ),
        }
    )
    root = _strict(
        {
            "global": _strict(
                {
                    "orgId": {
                        "type": "string",
                        "description": "Part of the default zone id.",
                    },
                    "cloudStorage": _storage(required=True),
                }
            ),
            "az-service": service,
        }
    )
    root["$schema"] = "http://json-schema.org/draft-07/schema#"
    root["required"] = ["global", "az-service"]
    return root


def main() -> None:
    sys.stdout.write(json.dumps(chart_schema(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
