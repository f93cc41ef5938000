"""Matchers: none configured silences every alert; what Alertmanager would reject is refused at
start-up, and the check agrees with a real Alertmanager case by case."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from az_agent.drivers.alerts import Matcher
from az_agent.drivers.alerts.alertmanager import AlertmanagerSilences, format_time
from az_agent.drivers.alerts.matchers import check_matchers
from az_agent.drivers.errors import Misconfigured
from tests.integration.alerts.conftest import CREATOR
from tests.servers.alertmanager import AlertmanagerServer

HOUR = timedelta(hours=1)
ACCEPTED = [
    [Matcher("alertname", ".+", is_regex=True)],
    [Matcher("zone", "az1")],
    [Matcher("zone", "az1", is_equal=False)],
    [Matcher("zone", "", is_equal=False)],
    [Matcher("severity", "info|debug", is_regex=True, is_equal=False)],
    [Matcher("team", r"\pL+", is_regex=True)],
    [Matcher("zone", ""), Matcher("team", "db")],
]
REJECTED = [
    [Matcher("", "x")],
    [Matcher("1zone", "x")],
    [Matcher("zone.name", "x")],
    [Matcher("zone", "(", is_regex=True)],
    [Matcher("zone", "(?=a)", is_regex=True)],
    [Matcher("zone", "")],
    [Matcher("alertname", ".*", is_regex=True)],
    [Matcher("zone", ""), Matcher("team", "a?", is_regex=True)],
]


async def _alert_silenced_by(url: str, alertname: str) -> list[str]:
    """Post an alert named ``alertname`` and return the silences Alertmanager says mute it."""
    now = datetime.now(UTC)
    alert = {
        "labels": {"alertname": alertname, "zone": "az1"},
        "startsAt": format_time(now),
        "endsAt": format_time(now + HOUR),
    }
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{url}/api/v2/alerts", json=[alert]) as answer:
            assert answer.status == 200, await answer.text()
        while time.monotonic() < deadline:
            params = {"filter": f'alertname="{alertname}"'}
            async with client.get(f"{url}/api/v2/alerts", params=params) as answer:
                listed: list[dict[str, Any]] = await answer.json()
            silenced = [s for a in listed for s in a["status"]["silencedBy"]]
            if silenced:
                return silenced
            await asyncio.sleep(0.05)
    return []


async def test_with_no_matchers_configured_every_alert_is_silenced(
    alertmanager: AlertmanagerServer,
) -> None:
    async with AlertmanagerSilences(alertmanager.url, created_by=CREATOR) as manager:
        silence_id = await manager.silence(comment="every alert", duration=HOUR)
        assert silence_id is not None
        try:
            silenced = await _alert_silenced_by(alertmanager.url, f"Any{uuid.uuid4().hex}")
            assert silence_id in silenced
        finally:
            await manager.expire(silence_id)


@pytest.mark.parametrize("matchers", ACCEPTED, ids=str)
async def test_matchers_the_check_accepts_alertmanager_accepts(
    alertmanager: AlertmanagerServer, matchers: list[Matcher]
) -> None:
    check_matchers(matchers)
    async with AlertmanagerSilences(alertmanager.url, created_by=CREATOR) as manager:
        silence_id = await manager.silence(comment="accepted", duration=HOUR, matchers=matchers)
        assert silence_id is not None
        await manager.expire(silence_id)


@pytest.mark.parametrize("matchers", REJECTED, ids=str)
async def test_matchers_the_check_refuses_alertmanager_refuses(
    alertmanager: AlertmanagerServer, matchers: list[Matcher]
) -> None:
    with pytest.raises(ValueError, match=r"matcher|empty string"):
        check_matchers(matchers)
    async with AlertmanagerSilences(alertmanager.url, created_by=CREATOR) as manager:
        with pytest.raises(Misconfigured, match="silence invalid"):
            await manager.silence(comment="rejected", duration=HOUR, matchers=matchers)


@pytest.mark.parametrize("command", ["config", "run"])
async def test_a_matcher_alertmanager_would_reject_refuses_the_start(
    tmp_path: Path, command: str
) -> None:
    document = {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(tmp_path / "bucket")}}},
        "az-service": {
            "config": {
                "zone": "az1",
                "alertmanager": {
                    "url": "http://127.0.0.1:9",
                    "matchers": [{"name": "severity", "value": "(crit", "isRegex": True}],
                },
            }
        },
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(document))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AZ_AGENT")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "az_agent.cli",
        command,
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    lines = stderr.decode().splitlines()
    assert process.returncode == 2, (stdout, stderr)
    assert len(lines) == 1, lines
    assert "alertmanager" in lines[0], lines
    assert "invalid regular expression '(crit'" in lines[0], lines
