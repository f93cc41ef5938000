"""The drill's verdict: PASS only when all three phases ran and nothing was lost."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from az_agent.sandbox.drill_report import (
    DatabaseCheck,
    DrillReport,
    PhaseReport,
    SegmentCheck,
    Step,
)


def _phase(name: str, **changes: object) -> PhaseReport:
    phase = PhaseReport(
        name,
        "az1",
        "az2",
        ok=True,
        segments=SegmentCheck(committed=4, present=4),
        databases=[DatabaseCheck("configdb", True, 2, 40)],
        dump_age_seconds=0.0,
        rto_seconds=3.25,
        steps=[Step("/pause of the old zone", 1.0), Step("rehydrate-segments", 0.5)],
    )
    for key, value in changes.items():
        setattr(phase, key, value)
    return phase


def _report(*phases: PhaseReport) -> DrillReport:
    return DrillReport(options={"segments": 4}, postgres="compared", phases=list(phases))


def _rendered(report: DrillReport) -> str:
    out = io.StringIO()
    report.render(Console(file=out, width=160))
    return out.getvalue()


def test_three_clean_phases_pass() -> None:
    report = _report(_phase("a"), _phase("b"), _phase("c"))
    assert report.passed
    document = json.loads(json.dumps(report.to_json()))
    assert (document["verdict"], document["nothingLost"]) == ("PASS", True)
    assert document["phases"][0]["rtoSeconds"] == 3.25
    assert document["phases"][0]["segments"]["crcMismatches"] == []
    assert document["phases"][0]["nothingLost"] is True
    assert "PASS: nothing was lost" in _rendered(report)


@pytest.mark.parametrize(
    "broken",
    [
        {"segments": SegmentCheck(committed=4, present=3, missing=["s3"], bytes_missing=10)},
        {"segments": SegmentCheck(committed=4, present=3, crc_mismatches=["s3"])},
        {"databases": [DatabaseCheck("configdb", False, 2, 40, ["table t differs"])]},
        {"ok": False, "error": "activation failed"},
        {"segments": None},
    ],
)
def test_any_loss_or_failure_fails(broken: dict[str, object]) -> None:
    report = _report(_phase("a"), _phase("b", **broken), _phase("c"))
    assert not report.passed
    document = report.to_json()
    assert (document["verdict"], document["nothingLost"]) == ("FAIL", False)
    assert document["phases"][1]["nothingLost"] is False
    text = _rendered(report)
    assert "verdict: FAIL" in text
    assert "FAILED" in text


def test_an_interrupted_or_short_drill_fails() -> None:
    assert not _report(_phase("a"), _phase("b")).passed
    report = _report(_phase("a"), _phase("b"), _phase("c"))
    report.interrupted = "SIGTERM: stopped everything the drill started"
    assert not report.passed
    assert "interrupted: SIGTERM" in _rendered(report)


def test_without_postgres_the_databases_are_skipped_not_lost() -> None:
    report = _report(*(_phase(n, databases=None, dump_age_seconds=None) for n in "abc"))
    assert report.passed
    assert "skipped" in _rendered(report)
