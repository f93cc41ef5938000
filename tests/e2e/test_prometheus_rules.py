"""deploy/prometheus/rules.yml and deploy/grafana/az-agent.json on a real Prometheus scraping
two live agents, through a forced activation that fences the first zone.

The rules are loaded as written but for two changes, so that the live agents' ordinary values
fire them within seconds: every ``for`` is 0s, and the recovery point thresholds are -1 s (a
zone that backs up always exceeds them, a zone that does not exports no recovery point). With
zone 1 leading, exactly its recovery point alerts fire; once zone 2 activated with force, zone 1
is FENCED, its recovery point alerts have moved to zone 2, and nothing else fires: no "no
primary", no "both zones primary". Once zone 2 is paused too, nobody backs up: "no primary"
fires for the group, and the recovery point alerts are gone. Every rule evaluates without error
(a join that matched many-to-many would), and every dashboard expression answers; the ones the
dashboard is for answer with data.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    REALTIME_TABLE,
    Zone,
    call,
    dumped,
    leads,
    status_of,
    wait_for,
)
from tests.monitoring import (
    alerts,
    concrete,
    load_dashboard,
    load_rules,
    metric_names,
    panel_targets,
)
from tests.servers.prometheus import PrometheusServer

Alert = tuple[str, str, str]
"""(alertname, zone or group, kind or "") of a firing alert."""

ALL = {"$group": ".*", "$zone": ".*"}
STEADY_SECONDS = 3.0
"""How long a set of alerts must hold (three evaluations) to count as the steady state."""

BEFORE = {
    "az_agent_rpo_seconds",
    "az_agent_postgres_dump_age_seconds",
    "az_agent_state",
    "az_agent_primary",
    "az_agent_primary_term",
    "az_agent_epoch",
    "az_agent_dependency_up",
}
"""Panels whose expressions must answer with data while zone 1 leads (by the metric read)."""
AFTER = BEFORE | {
    "az_agent_activation_phase_duration_seconds",
    "az_agent_rehydration_bytes_per_second",
    "az_agent_rehydration_bytes",
    "az_agent_rehydration_segments",
}
PAUSED = (AFTER - {"az_agent_rpo_seconds", "az_agent_postgres_dump_age_seconds"}) | {
    "az_agent_pause_phase_duration_seconds",
    "az_agent_pause_duration_seconds",
}


def live_rules(directory: Path) -> Path:
    rules = load_rules()
    for rule in alerts(rules):
        rule["for"] = "0s"
        if rule["alert"] == "AzAgentRecoveryPointHigh":
            expr = rule["expr"]
            for threshold in ("> 900", "> 7200"):
                assert threshold in expr
                expr = expr.replace(threshold, "> -1")
            rule["expr"] = expr
    path = directory / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture
async def scraped(stack: tuple[Zone, Zone], tmp_path: Path) -> AsyncIterator[PrometheusServer]:
    targets = {z.name: f"127.0.0.1:{z.config.service.http.port}" for z in stack}
    for zone in stack:
        await zone.start()
    async with PrometheusServer(targets, rule_files=[live_rules(tmp_path)]) as prometheus:
        await prometheus.wait_scraped()
        yield prometheus


async def firing(prometheus: PrometheusServer) -> set[Alert]:
    found = set()
    for alert in await prometheus.alerts():
        labels = alert["labels"]
        assert alert["state"] == "firing", alert  # every `for` is 0s: nothing stays pending
        found.add(
            (labels["alertname"], labels.get("zone", labels["group"]), labels.get("kind", ""))
        )
    return found


async def steady(prometheus: PrometheusServer, expected: set[Alert], what: str) -> None:
    """Wait until exactly ``expected`` fires, and check it still does a few evaluations on."""

    async def reached() -> bool:
        return await firing(prometheus) == expected

    try:
        await wait_for(reached, what, within=30, interval=0.2)
    except AssertionError:
        raise AssertionError(f"{what}: {await firing(prometheus)} != {expected}") from None
    await asyncio.sleep(STEADY_SECONDS)
    assert await firing(prometheus) == expected, what


async def rules_healthy(prometheus: PrometheusServer) -> None:
    rules = await prometheus.rules()
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alerts(load_rules())}
    for rule in rules:
        assert rule["health"] == "ok", rule


async def dashboard_answers(prometheus: PrometheusServer, with_data: set[str]) -> None:
    """Every panel expression is a valid query here; those reading ``with_data`` return data."""
    answered: set[str] = set()
    for panel, target in panel_targets(load_dashboard()):
        series = await prometheus.query(concrete(target["expr"], ALL))  # fails on an error
        if series:
            answered |= metric_names(target["expr"]) & with_data
            zones = {s.get("zone") for s in series} - {None}
            assert zones <= {"az1", "az2"}, (panel["title"], series)
    assert answered == with_data, f"no data for {with_data - answered}"


async def activate_with_force(target: Zone, source: Zone, attempts: int = 3) -> None:
    """``/activate?force=true`` on ``target`` until it succeeded. Retried only when the forced
    take-over of the live source lease lost its compare-and-swap to the source's own renewal
    (``LeaseHeld`` in ``fence-source``: a race of ``LeaseKeeper.take_over(force=True)``, which
    does not retry it, more likely the longer the source's log is)."""
    for _ in range(attempts):
        await call("POST", f"{target.url}/activate?zone={source.name}&force=true", expect=202)

        async def ended() -> dict[str, Any] | None:
            operation: dict[str, Any] = (await status_of(target.url))["operation"]
            return None if operation["status"] == "running" else operation

        operation = await wait_for(ended, f"zone {target.name}'s activation to end")
        if operation["status"] == "succeeded":
            return
        assert operation["phase"] == "fence-source", operation
        assert "is live" in operation["error"], operation
    raise AssertionError(f"the forced activation lost to the source's renewals {attempts} times")


async def test_rules_and_dashboard_on_live_agents_through_a_forced_activation(
    stack: tuple[Zone, Zone], scraped: PrometheusServer
) -> None:
    one, two = stack
    prometheus = scraped
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await one.pinot.cluster.commit_consuming(REALTIME_TABLE)  # something to rehydrate
    await wait_for(lambda: dumped(one), "zone 1's first dumps")
    rpo_one = {("AzAgentRecoveryPointHigh", "az1", kind) for kind in ("segments", "postgres")}
    await steady(prometheus, rpo_one, "zone 1 backs up, nothing else fires")
    await rules_healthy(prometheus)
    await dashboard_answers(prometheus, BEFORE)

    await activate_with_force(two, one)

    async def fenced() -> bool:
        return bool((await call("GET", f"{one.url}/status"))["state"] == "FENCED")

    await wait_for(fenced, "zone 1 to notice it was fenced")
    rpo_two = {("AzAgentRecoveryPointHigh", "az2", kind) for kind in ("segments", "postgres")}
    await steady(
        prometheus, rpo_two | {("AzAgentFenced", "az1", "")}, "zone 1 fenced, zone 2 backs up"
    )
    labels = [a["labels"] for a in await prometheus.alerts()]
    fenced_alert = next(label for label in labels if label["alertname"] == "AzAgentFenced")
    assert (fenced_alert["group"], fenced_alert["az"]) == ("default", "az1")
    assert fenced_alert["severity"] == "warning"
    await rules_healthy(prometheus)
    await dashboard_answers(prometheus, AFTER)
    # No operation runs any more: no start time, so no "stuck" either way.
    assert await prometheus.query("az_agent_operation_started_timestamp_seconds") == []

    paused = await call("POST", f"{two.url}/pause", expect=200)
    assert paused["state"] == "PAUSED"
    nobody = {("AzAgentFenced", "az1", ""), ("AzAgentNoPrimary", "default", "")}
    await steady(prometheus, nobody, "zone 1 fenced, zone 2 paused: no primary")
    await rules_healthy(prometheus)
    await dashboard_answers(prometheus, PAUSED)
