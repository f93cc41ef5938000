"""deploy/grafana/az-agent.json: a well-formed Grafana dashboard (no Grafana here to load it),
whose every panel expression promtool parses and reads only metrics the agent exports, and
which shows what the issue asks: RPO per kind, backup lag, state and primary per zone, term,
activation duration per phase, rehydration throughput and progress."""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

import pytest

from tests.monitoring import (
    ROOT,
    check_expressions,
    concrete,
    exported_metric_names,
    load_dashboard,
    metric_names,
    panel_targets,
    variables_used,
)

PANEL_TYPES = {
    "row",
    "stat",
    "timeseries",
    "state-timeline",
    "bargauge",
    "gauge",
    "table",
    "text",
}
GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VALUES = {"$group": "default", "$zone": "az1"}
"""A value for each of the dashboard's variables, for promtool."""

REQUIRED = {
    "az_agent_rpo_seconds": "recovery point per kind",
    "az_agent_segment_backup_lag_seconds": "backup lag",
    "az_agent_postgres_dump_age_seconds": "backup lag (dumps)",
    "az_agent_state": "state per zone",
    "az_agent_primary": "primary per zone",
    "az_agent_primary_term": "term",
    "az_agent_activation_phase_duration_seconds": "activation duration per phase",
    "az_agent_rehydration_bytes_per_second": "rehydration throughput",
    "az_agent_rehydration_bytes": "rehydration progress",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [inner for panel in dashboard["panels"] for inner in [panel, *panel.get("panels", [])]]


def test_top_level_fields(dashboard: dict[str, Any]) -> None:
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["title"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert {"from", "to"} <= set(dashboard["time"])
    assert isinstance(dashboard["panels"], list)
    assert dashboard["panels"]


def test_a_datasource_variable_that_every_panel_and_target_uses(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    for name, variable in variables.items():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, name
    for panel, target in panel_targets(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert target["datasource"] == DATASOURCE, panel["title"]


def test_every_variable_an_expression_uses_is_defined(dashboard: dict[str, Any]) -> None:
    defined = {f"${v['name']}" for v in dashboard["templating"]["list"]}
    builtin = {"$__rate_interval", "$__interval", "$__range"}
    queries = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for expr in [t["expr"] for _, t in panel_targets(dashboard)] + queries:
        assert variables_used(expr) <= defined | builtin, expr
    assert set(VALUES) == defined - {"$datasource"}


def test_panels_have_ids_titles_types_and_targets(dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), ids
    for panel in panels:
        assert panel["title"].strip(), panel
        assert panel["type"] in PANEL_TYPES, panel["type"]
        if panel["type"] == "row":
            continue
        targets = panel["targets"]
        assert targets, panel["title"]
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in targets), panel["title"]


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    boxes = []
    for panel in dashboard["panels"]:  # the top level: what an open dashboard lays out
        grid = panel["gridPos"]
        x, y, w, h = (grid[k] for k in ("x", "y", "w", "h"))
        assert all(isinstance(v, int) for v in (x, y, w, h)), panel["title"]
        assert min(x, y) >= 0, panel["title"]
        assert min(w, h) > 0, panel["title"]
        assert x + w <= GRID_WIDTH, panel["title"]
        boxes.append((panel["title"], x, y, w, h))
    for (a, ax, ay, aw, ah), (b, bx, by, bw, bh) in combinations(boxes, 2):
        apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
        assert apart, f"panels {a!r} and {b!r} overlap"


def _expressions(dashboard: dict[str, Any]) -> dict[str, str]:
    return {
        f"panel_{panel['id']}_{target['refId']}": concrete(target["expr"], VALUES)
        for panel, target in panel_targets(dashboard)
    }


def test_promtool_parses_every_panel_expression(dashboard: dict[str, Any]) -> None:
    exprs = _expressions(dashboard)
    result = check_expressions(exprs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_would_catch_a_broken_expression(dashboard: dict[str, Any]) -> None:
    exprs = _expressions(dashboard)
    exprs["panel_broken_A"] = "sum by (zone) (az_agent_rpo_seconds"
    result = check_expressions(exprs)
    assert result.returncode != 0
    assert "panel_broken_A" in result.stdout + result.stderr


def test_every_metric_a_panel_reads_is_exported_by_the_agent(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(t["expr"]) for _, t in panel_targets(dashboard)))
    assert used <= exported_metric_names(), used - exported_metric_names()
    missing = {name: what for name, what in REQUIRED.items() if name not in used}
    assert not missing, f"no panel shows {missing}"


def test_the_chart_embeds_this_very_file() -> None:
    chart = ROOT / "charts" / "az-agent"
    copy = chart / "files" / "az-agent.json"
    dashboard = ROOT / "deploy" / "grafana" / "az-agent.json"
    assert copy.read_text() == dashboard.read_text(), f"{copy} differs from {dashboard}"
