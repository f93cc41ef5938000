"""The agents' metrics as a real Prometheus sees them, and their logs, through a failover.

Recovery point series exist only on the zone that backs up (the leading primary); nothing
exports ``_created`` series; durations are absent until their operation first ran; after the
activation, rehydration shows no throughput and ``done`` equals ``total``. Both agents run in
this process: every JSON line they log names its own zone and holder, and the operation's id
inside one.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from az_agent.agent.observability.logs import json_handler
from tests.e2e.conftest import Zone, call, leads, wait_for
from tests.servers.prometheus import PrometheusServer

PAUSE_PHASES = {
    "silence-alerts",
    "pause-consumption",
    "wait-committed",
    "flush-segments",
    "final-dump",
    "stop-backups",
    "write-handover",
    "release-lease",
}


@pytest.fixture
def json_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON lines logged at INFO and above so far, as ``az-agent run`` writes them."""
    stream = io.StringIO()
    handler = json_handler(stream)
    caplog.set_level(logging.INFO)
    logging.getLogger().addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.fixture
async def scraped(stack: tuple[Zone, Zone]) -> AsyncIterator[PrometheusServer]:
    targets = {z.name: f"127.0.0.1:{z.config.service.http.port}" for z in stack}
    for zone in stack:
        await zone.start()
    async with PrometheusServer(targets) as prometheus:
        await prometheus.wait_scraped()
        yield prometheus


async def zones_with(prometheus: PrometheusServer, expr: str) -> dict[str, list[dict[str, str]]]:
    """Per zone (the target's ``az`` label), the series ``expr`` returns."""
    found: dict[str, list[dict[str, str]]] = {}
    for series in await prometheus.query(expr):
        found.setdefault(series["az"], []).append(series)
    return found


async def kinds(prometheus: PrometheusServer) -> dict[str, set[str]]:
    """Per zone, the kinds of ``az_agent_rpo_seconds`` it exports."""
    found = await zones_with(prometheus, "az_agent_rpo_seconds")
    return {zone: {s["kind"] for s in series} for zone, series in found.items()}


def exporting(expr: str) -> Any:
    """A probe for :func:`settled`: the zones for which ``expr`` has a series."""

    async def probe(prometheus: PrometheusServer) -> set[str]:
        return set(await zones_with(prometheus, expr))

    return probe


async def settled(prometheus: PrometheusServer, probe: Any, expected: Any, what: str) -> None:
    """Wait (a few scrapes at most) until ``await probe(prometheus) == expected``."""

    async def check() -> bool:
        return bool(await probe(prometheus) == expected)

    try:
        await wait_for(check, what, within=20, interval=0.2)
    except AssertionError:
        raise AssertionError(f"{what}: {await probe(prometheus)} != {expected}") from None


async def promtool_check(zone: Zone) -> None:
    """``promtool check metrics``: the exposition follows Prometheus' naming rules."""
    async with aiohttp.ClientSession() as client, client.get(f"{zone.url}/metrics") as response:
        text = await response.read()
    process = await asyncio.create_subprocess_exec(
        "promtool",
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate(text)
    assert process.returncode == 0, output.decode()


async def test_metrics_and_logs_tell_the_truth_through_a_failover(
    stack: tuple[Zone, Zone],
    json_logs: Callable[[], list[dict[str, Any]]],
    scraped: PrometheusServer,
) -> None:
    one, two = stack
    prometheus = scraped
    await wait_for(lambda: leads(one), "zone 1 to lead")
    both = {"segments", "postgres"}
    await settled(prometheus, kinds, {"az1": both}, "rpo series on the leader only")
    assert await zones_with(prometheus, '{__name__=~"az_agent_.+"}') != {}
    assert await prometheus.query('{__name__=~".+_created"}') == []
    for name in ("activation_duration_seconds", "pause_duration_seconds"):
        assert await prometheus.query(f"az_agent_{name}") == [], f"{name} before any ran"
    ages = await zones_with(prometheus, "az_agent_postgres_dump_age_seconds")
    assert set(ages) == {"az1"}
    for zone in stack:
        await promtool_check(zone)

    paused = await call("POST", f"{one.url}/pause", expect=200)
    assert paused["state"] == "PAUSED"
    await settled(prometheus, kinds, {}, "no rpo series while no zone backs up")
    await settled(prometheus, exporting("az_agent_pause_duration_seconds"), {"az1"}, "pause")
    durations = await zones_with(prometheus, "az_agent_pause_duration_seconds")
    assert float(durations["az1"][0]["value"]) > 0
    phases = await zones_with(prometheus, "az_agent_pause_phase_duration_seconds")
    assert {s["phase"] for s in phases["az1"]} == PAUSE_PHASES

    accepted = await call("POST", f"{two.url}/activate?zone={one.name}", expect=202)

    async def activated() -> bool:
        body = await call("GET", f"{two.url}/status")
        operation = body["operation"]
        assert operation["status"] != "failed", operation
        return bool(body["state"] == "ACTIVE" and operation["status"] == "succeeded")

    await wait_for(activated, "zone 2 to activate")
    await wait_for(lambda: leads(two), "zone 2 to lead")
    await settled(prometheus, kinds, {"az2": both}, "rpo series on the new leader only")
    activation = "az_agent_activation_duration_seconds"
    await settled(prometheus, exporting(activation), {"az2"}, "activation duration")
    durations = await zones_with(prometheus, activation)
    assert float(durations["az2"][0]["value"]) > 0
    rate = await zones_with(prometheus, "az_agent_rehydration_bytes_per_second")
    assert [s["value"] for s in rate["az2"]] == ["0"]  # no activation runs now
    for name in ("az_agent_rehydration_segments", "az_agent_rehydration_bytes"):
        progress = {s["of"]: float(s["value"]) for s in (await zones_with(prometheus, name))["az2"]}
        assert progress["done"] == progress["total"] > 0, name

    operations = {"az1": paused["operation"]["id"], "az2": accepted["operation"]["id"]}
    assert_logs_say_who(json_logs(), operations)


def assert_logs_say_who(lines: list[dict[str, Any]], operations: dict[str, str]) -> None:
    """Every agent line names its zone and holder; an operation's own lines, its id."""
    agent_lines = [line for line in lines if line["logger"].startswith("az_agent.agent.")]
    assert {line.get("zone") for line in agent_lines} == {"az1", "az2"}
    for line in agent_lines:
        assert str(line.get("holder", "")).startswith(f"{line['zone']}-agent"), line
    ran = {(line["zone"], line.get("operation")) for line in agent_lines}
    assert set(operations.items()) <= ran
    for line in agent_lines:
        if line["logger"].startswith("az_agent.agent.operations.phases"):
            assert line.get("operation") == operations[line["zone"]], line
        if "rehydration done" in line["msg"] or " paused in " in line["msg"]:
            assert line.get("operation") == operations[line["zone"]], line
