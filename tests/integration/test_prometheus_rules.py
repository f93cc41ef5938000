"""deploy/prometheus/rules.yml: valid for promtool, its alert unit tests pass, and those tests
are sharp: each alert is tested firing and quiet, and breaking a rule (a threshold, a ``for``,
a join, or the rule itself) makes ``promtool test rules`` fail. Every metric the rules read is
one the agent exports; the chart's copy is the same file. (A real Prometheus evaluating the
rules on live agents: ``tests/e2e/test_prometheus_rules.py``.)"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring import (
    ROOT,
    RULES,
    RULES_TESTS,
    alerts,
    exported_metric_names,
    load_rules,
    metric_names,
    promtool,
)

EXPECTED_ALERTS = {
    "AzAgentRecoveryPointHigh",
    "AzAgentBackupsFailing",
    "AzAgentFenced",
    "AzAgentFailed",
    "AzAgentActivationStuck",
    "AzAgentPauseStuck",
    "AzAgentNoPrimary",
    "AzAgentBothZonesPrimary",
}

MUTATIONS = {
    "segments threshold": ('kind="segments"} > 900', 'kind="segments"} > 1200'),
    "postgres threshold": ('kind="postgres"} > 7200', 'kind="postgres"} > 6000'),
    "backup failures for": ("for: 25m", "for: 15m"),
    "fenced value": ("az_agent_fenced == 1", "az_agent_fenced == 0"),
    "failed state": ('az_agent_state{state="FAILED"}', 'az_agent_state{state="PAUSED"}'),
    "activation bound": ('kind="activate"} > 3600', 'kind="activate"} > 7200'),
    "pause bound": ('kind="pause"} > 1800', 'kind="pause"} > 3600'),
    "no primary while activating": ("unless on (group)", "and on (group)"),
    "replicas counted once": ("max by (group, zone) (", "max by (group, instance) ("),
    "no primary needs both zones seen": (
        "(max_over_time(az_agent_info[6h]))) > 1",
        "(max_over_time(az_agent_info[6h]))) > 0",
    ),
    "primary needs the lease": (
        "count by (group) (\n            max by (group, zone) (\n"
        "              (az_agent_primary * az_agent_leader)",
        "count by (group) (\n            max by (group, zone) (\n              (az_agent_primary)",
    ),
}


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_promtool_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_the_issue_asks_for_with_severity_and_a_summary() -> None:
    rules = list(alerts(load_rules()))
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        summary = rule["annotations"]["summary"]
        assert "$labels.zone" in summary or "$labels.group" in summary, rule["alert"]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(RULES_TESTS.read_text())
    assert tests["rule_files"] == ["rules.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_every_metric_the_rules_read_is_exported_by_the_agent() -> None:
    used = set().union(*(metric_names(rule["expr"]) for rule in alerts(load_rules())))
    assert "az_agent_info" in used
    assert used <= exported_metric_names(), used - exported_metric_names()


def _run_tests_against(rules_text: str, tmp_path: Path) -> tuple[int, str]:
    (tmp_path / "rules.yml").write_text(rules_text)
    shutil.copy(RULES_TESTS, tmp_path / "rules.test.yml")
    result = promtool("test", "rules", "rules.test.yml", cwd=tmp_path)
    return result.returncode, result.stdout + result.stderr


def test_the_unit_tests_run_against_a_copy_pass(tmp_path: Path) -> None:
    code, output = _run_tests_against(RULES.read_text(), tmp_path)
    assert code == 0, output  # the control for the mutations below


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_a_broken_rule_fails_the_unit_tests(name: str, tmp_path: Path) -> None:
    old, new = MUTATIONS[name]
    text = RULES.read_text()
    assert text.count(old) == 1, f"{name}: {old!r} not found once"
    code, output = _run_tests_against(text.replace(old, new), tmp_path)
    assert code != 0, f"promtool test rules passed with the {name} broken:\n{output}"


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_a_missing_alert_fails_the_unit_tests(alert: str, tmp_path: Path) -> None:
    rules: dict[str, Any] = load_rules()
    for group in rules["groups"]:
        group["rules"] = [rule for rule in group["rules"] if rule.get("alert") != alert]
    code, output = _run_tests_against(yaml.safe_dump(rules), tmp_path)
    assert code != 0, f"promtool test rules passed without {alert}:\n{output}"


def test_the_chart_embeds_this_very_file() -> None:
    chart = ROOT / "charts" / "az-agent"
    copy = chart / "files" / "rules.yml"
    assert copy.read_text() == RULES.read_text(), f"{copy} differs from {RULES}"
