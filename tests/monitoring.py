"""What the rules and dashboard tests share: the files under ``deploy/``, promtool, the metric
names a PromQL expression uses, and the names the agent actually exports.

Grafana cannot be installed here, so a dashboard's expressions are checked the way the reference
notes advise: Grafana's variables replaced by plain values, each expression made a recording
rule of a throwaway rules file, and the file given to ``promtool check rules`` (which parses
every expression).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from az_agent.agent.observability.metrics import AgentMetrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TESTS = ROOT / "deploy" / "prometheus" / "rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "az-agent.json"

GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
}
"""Grafana's own variables, replaced by plausible values before promtool sees an expression."""

_METRIC = re.compile(r"\baz_agent_[a-zA-Z0-9_]*[a-zA-Z0-9]\b")
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        raise RuntimeError(
            "promtool not found; install it with "
            "`apt-get install -y --no-install-recommends prometheus` (scripts/test.sh does)"
        )
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def load_rules(path: Path = RULES) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def alerts(rules: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield rule


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    loaded = json.loads(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panel_targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (panel, target) of the dashboard, panels nested in collapsed rows included."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner, target


def variables_used(expr: str) -> set[str]:
    return {f"${name}" for name in _VARIABLE.findall(expr)}


def concrete(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with each dashboard variable (``values``, e.g. ``{"$group": ".*"}``) and each of
    Grafana's own replaced, longest names first (``$__rate_interval`` before ``$__range``)."""
    replacements = {**GRAFANA_VARIABLES, **values}
    for name in sorted(replacements, key=len, reverse=True):
        expr = expr.replace(name, replacements[name])
    return expr


def check_expressions(exprs: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on a throwaway file with one recording rule per expression
    (keys are the rules' names: letters, digits, ``_`` and ``:``)."""
    group = {"name": "expressions", "rules": [{"record": k, "expr": v} for k, v in exprs.items()]}
    with tempfile.TemporaryDirectory(prefix="az-promql-") as directory:
        path = Path(directory) / "expressions.yml"
        path.write_text(yaml.safe_dump({"groups": [group]}))
        return promtool("check", "rules", str(path))


def metric_names(expr: str) -> set[str]:
    """The ``az_agent_*`` metric names an expression reads."""
    return set(_METRIC.findall(expr))


def exported_metric_names() -> set[str]:
    """Every series name the agent's registry can export (counters with ``_total``), taken from
    a fresh registry, whose collectors describe their families even before they have values."""
    registry = AgentMetrics("az1").registry
    names = {name for name in registry._names_to_collectors if name.startswith("az_agent_")}
    counters = {name.removesuffix("_total") for name in names if name.endswith("_total")}
    # A counter is registered under its bare name and _created too; neither is ever exported.
    return names - counters - {f"{counter}_created" for counter in counters}
