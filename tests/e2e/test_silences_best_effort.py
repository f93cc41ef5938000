"""A planned failover while Alertmanager is down: pause and activation succeed with a warning,
the failures are counted, and both zones' silences are created once Alertmanager is back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import REALTIME_TABLE, Zone, call, leads, prometheus, wait_for
from tests.e2e.test_planned_failover import active_silences, operation_done
from tests.servers.alertmanager import AlertmanagerServer


@pytest.fixture
def alertmanager() -> Iterator[AlertmanagerServer]:
    """This module's own Alertmanager, which the test stops and starts again."""
    server = AlertmanagerServer()
    server.start()
    yield server
    server.stop()


def _warned(operation: dict[str, Any]) -> None:
    warnings = operation["warnings"]
    assert len(warnings) == 1, operation
    assert "alerts not silenced" in warnings[0], warnings
    silence_phase = next(p for p in operation["phases"] if p["name"] == "silence-alerts")
    assert silence_phase["status"] == "done", silence_phase


async def test_a_failover_goes_on_while_alertmanager_is_down(
    stack: tuple[Zone, Zone], alertmanager: AlertmanagerServer
) -> None:
    one, two = stack
    await one.start()
    await two.start()
    for zone in (one, two):
        assert zone.agent is not None
        zone.agent.silence_retry.low_seconds = zone.agent.silence_retry.high_seconds = 0.2
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await one.pinot.cluster.commit_consuming(REALTIME_TABLE)
    alertmanager.halt()

    paused = await call("POST", f"{one.url}/pause", expect=200)
    assert paused["state"] == "PAUSED"
    _warned(paused["operation"])
    await call("POST", f"{two.url}/activate?zone=az1", expect=202)
    done = await wait_for(lambda: operation_done(two), "zone 2 to activate")
    _warned(done["operation"])
    for zone in (one, two):
        failures = (await prometheus(zone))["az_agent_silence_failures_total"]
        assert failures >= 1, (zone.name, failures)
    assert await wait_for(lambda: leads(two), "zone 2 to lead")

    alertmanager.restart()
    for zone in (one, two):
        created = await wait_for(
            lambda zone=zone: active_silences(alertmanager.url, zone.name),
            f"zone {zone.name}'s silence to be created",
            within=30,
        )
        assert len(created) == 1, created
    # The new primary's /resume lifts its silence; the old one's ends by itself or on fail-back.
    created = await active_silences(alertmanager.url, two.name)
    resumed = await call("POST", f"{two.url}/resume", expect=200)
    assert resumed["silencesLifted"] == created, resumed
    assert await active_silences(alertmanager.url, two.name) == []
