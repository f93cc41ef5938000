"""A pause with ``coldStandby.scaleDownOnPause`` on a whole agent, workloads in memory
(tests/fakeworkloads.py); the real API server's version is tests/integration/kubernetes/."""

from __future__ import annotations

import asyncio

import pytest

from az_agent.agent.operations.pause import PHASES
from az_agent.agent.operations.requests import PauseRequest
from az_agent.agent.operations.states import AgentState
from az_agent.drivers.kubernetes.base import WorkloadKind
from az_agent.state.workloads import read_workloads
from tests.fakeworkloads import FakeWorkloads
from tests.integration.agent_operations.conftest import ZONE, Rig, until

STS = WorkloadKind.STATEFULSET
NAMED = [{"kind": "StatefulSet", "name": "pinot-server"}, {"kind": "StatefulSet", "name": "pg"}]


def zone() -> FakeWorkloads:
    workloads = FakeWorkloads()
    workloads.add(STS, "pinot-server", 3)
    workloads.add(STS, "pg", 1)
    return workloads


async def recorded(rig: Rig) -> dict[str, int]:
    record = await read_workloads(rig.store.inner, ZONE)
    return {name: n for (_, _, name), n in record.counts().items()} if record else {}


async def test_the_leader_records_then_the_pause_scales_to_zero(rig: Rig) -> None:
    rig.cold_standby = {"workloads": NAMED, "scaleDownOnPause": True}
    workloads = zone()
    async with rig.running(workloads=workloads) as agent:
        await until(lambda: agent.session is not None, "the agent to lead")
        deadline = asyncio.get_running_loop().time() + 10
        while not await recorded(rig):  # the leader's loop records at the session's start
            assert asyncio.get_running_loop().time() < deadline, "nothing recorded"
            await asyncio.sleep(0.05)
        assert await recorded(rig) == {"pinot-server": 3, "pg": 1}
        status, body = await agent.pause(PauseRequest())
        assert (status, body["state"]) == (200, "PAUSED")
        phases = body["operation"]["phases"]
        assert [p["name"] for p in phases] == [*PHASES, "scale-down"]
        assert phases[-1]["detail"] == "scaled to 0: pinot-server (was 3), pg (was 1)"
    assert [w.replicas for w in workloads.items.values()] == [0, 0]
    assert await recorded(rig) == {"pinot-server": 3, "pg": 1}


async def test_a_scale_down_that_fails_is_a_warning_not_a_failed_pause(rig: Rig) -> None:
    rig.cold_standby = {"workloads": NAMED, "scaleDownOnPause": True}
    workloads = zone()
    async with rig.running(workloads=workloads) as agent:
        await until(lambda: agent.session is not None, "the agent to lead")
        workloads.down = 1000  # the API server stops answering
        status, body = await agent.pause(PauseRequest())
        assert (status, body["state"]) == (200, "PAUSED"), body
        assert agent.state is AgentState.PAUSED
        operation = body["operation"]
        assert operation["phases"][-1]["detail"].startswith("failed: injected")
        [warning] = operation["warnings"]
        assert warning.startswith("workloads not scaled down (scale them to 0 by hand)")
    assert [w.replicas for w in workloads.items.values()] == [3, 1]


@pytest.mark.parametrize("raw", [{"workloads": NAMED}, {}])
async def test_without_scale_down_on_pause_the_pause_has_its_usual_phases(
    rig: Rig, raw: dict[str, object]
) -> None:
    rig.cold_standby = raw
    workloads = zone()
    async with rig.running(workloads=workloads) as agent:
        await until(lambda: agent.session is not None, "the agent to lead")
        status, body = await agent.pause(PauseRequest())
        assert status == 200
        assert [p["name"] for p in body["operation"]["phases"]] == list(PHASES)
    assert [w.replicas for w in workloads.items.values()] == [3, 1]
