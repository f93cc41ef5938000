"""Silences are recorded as an intent before they are created (a real Alertmanager), so a
crash between Alertmanager's answer and the journal's write leaves nothing unliftable."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta

import pytest

from az_agent.agent.daemon import Agent
from az_agent.agent.errors import OperationFailed
from az_agent.agent.operations.journal import silences_key
from az_agent.agent.operations.requests import PauseRequest
from az_agent.agent.operations.states import AgentState
from az_agent.drivers.alerts import Matcher
from az_agent.drivers.alerts.alertmanager import AlertmanagerSilences
from tests.integration.agent_operations.conftest import ZONE, Rig, until
from tests.servers.alertmanager import AlertmanagerServer

HOUR = timedelta(hours=1)


class CrashAfterCreate(AlertmanagerSilences):
    """Creates the silence, then dies before the caller can record its id."""

    created: str | None = None

    async def silence(
        self,
        *,
        comment: str,
        duration: timedelta,
        matchers: Sequence[Matcher] | None = None,
        created_by: str | None = None,
    ) -> str | None:
        self.created = await super().silence(
            comment=comment, duration=duration, matchers=matchers, created_by=created_by
        )
        raise RuntimeError("injected crash between creating the silence and recording it")


async def test_a_silence_created_just_before_a_crash_is_still_lifted_by_resume(
    rig: Rig, alertmanager: AlertmanagerServer
) -> None:
    rig.alertmanager_url, rig.matcher = alertmanager.url, uuid.uuid4().hex
    crashing = CrashAfterCreate(
        alertmanager.url, matchers=[Matcher("az_test", rig.matcher)], created_by="az-agent-test"
    )
    async with rig.running(silences=crashing) as agent:
        await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
        with pytest.raises(OperationFailed) as failed:
            await agent.pause(PauseRequest())
        assert failed.value.detail.startswith("silence-alerts: RuntimeError"), failed.value.detail
        created = crashing.created
        assert created is not None
        assert await crashing.is_active(created)

        status, body = await agent.resume()  # undoes the failed pause
        assert (status, agent.state) == (200, AgentState.ACTIVE)
        assert created in body["silencesLifted"], body
        assert not await crashing.is_active(created)
        status, body = await agent.resume()
        assert body["silencesLifted"] == [], "lifted once, forgotten afterwards"


async def test_ids_recorded_by_an_older_agent_are_still_lifted(
    rig: Rig, alertmanager: AlertmanagerServer
) -> None:
    """``silences.json`` used to be a bare list of ids; an upgraded agent still lifts them."""
    rig.alertmanager_url, rig.matcher = alertmanager.url, uuid.uuid4().hex
    async with rig.running() as agent:
        older = await agent.deps.silences.silence(comment="az-agent zone az1: op-0", duration=HOUR)
        assert older is not None
        await rig.store.put(silences_key(ZONE), json.dumps([older]).encode())
        status, body = await agent.resume()
        assert (status, body["silencesLifted"]) == (200, [older])
        assert not await agent.deps.silences.is_active(older)


def _failures_counted(agent: Agent) -> float:
    text = agent.deps.metrics.render().decode()
    for line in text.splitlines():
        if line.startswith("az_agent_silence_failures_total "):
            return float(line.split()[1])
    raise AssertionError("az_agent_silence_failures_total is not exported")


async def _settled_ids(rig: Rig) -> list[str]:
    data, _ = await rig.store.inner.get(silences_key(ZONE))
    return [str(r["id"]) for r in json.loads(data) if r.get("id")]


async def test_a_pause_goes_on_while_alertmanager_is_down_and_the_silence_comes_later(
    rig: Rig,
) -> None:
    server = AlertmanagerServer()
    server.start()
    try:
        rig.alertmanager_url, rig.matcher = server.url, uuid.uuid4().hex
        server.halt()
        async with rig.running() as agent:
            agent.silence_retry.low_seconds, agent.silence_retry.high_seconds = 0.05, 0.5
            await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
            status, body = await agent.pause(PauseRequest())
            assert (status, agent.state) == (200, AgentState.PAUSED), body
            warnings = body["operation"]["warnings"]
            assert len(warnings) == 1, warnings
            assert "alerts not silenced" in warnings[0], warnings
            assert agent.status()["operation"]["warnings"] == warnings
            assert _failures_counted(agent) >= 1
            assert await _settled_ids(rig) == []

            server.restart()
            deadline = time.monotonic() + 30
            while not (settled := await _settled_ids(rig)):
                assert time.monotonic() < deadline, "the silence was never created"
                await asyncio.sleep(0.05)
            assert await agent.deps.silences.is_active(settled[0])
            found = await agent.deps.silences.find(comment_contains=body["operation"]["id"])
            assert [s.id for s in found] == settled, "created once, not once per attempt"

            status, resumed = await agent.resume()
            assert resumed["silencesLifted"] == settled
            assert not await agent.deps.silences.is_active(settled[0])
    finally:
        server.stop()
