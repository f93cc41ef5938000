"""Rendering charts/az-agent with the real Helm engine (helm-python-sdk, Helm v4), for the
tests of this directory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "az-agent"
KUBE_VERSION = "1.30.0"
"""The one Kubernetes version the rendered objects are validated against."""
RELEASE = "kfuse"
NAMESPACE = "kfuse"
CONFIG_MOUNT = "/etc/az-agent"


@dataclass(frozen=True)
class Rendered:
    objects: list[dict[str, Any]]
    notes: str

    def find(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        return [
            o
            for o in self.objects
            if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
        ]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = self.find(kind, name)
        assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
        return found[0]

    @property
    def agent_config_text(self) -> str:
        text: str = self.one("ConfigMap", "az-service-config")["data"]["config.yaml"]
        return text

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment", "az-service")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.pod_spec["containers"]
        assert len(containers) == 1
        return containers[0]

    def mounts(self) -> dict[str, dict[str, Any]]:
        """mountPath -> the volume mounted there."""
        volumes = {v["name"]: v for v in self.pod_spec["volumes"]}
        return {m["mountPath"]: volumes[m["name"]] for m in self.container["volumeMounts"]}


def render(
    values: Mapping[str, Any], namespace: str = NAMESPACE, release: str = RELEASE
) -> Rendered:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(
            values=dict(values), name=release, namespace=namespace, is_install=True
        )
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(d for d in yaml.safe_load_all(text) if d)
    return Rendered(objects, notes)


def chart_values() -> dict[str, Any]:
    """The chart's values.yaml."""
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of maps: ``override`` over ``base``, recursively (null deletes)."""
    merged = dict(base)
    for key, value in override.items():
        earlier = merged.get(key)
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(earlier, Mapping):
            merged[key] = deep_merge(earlier, value)
        else:
            merged[key] = value
    return merged
