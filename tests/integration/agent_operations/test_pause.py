"""``/pause`` on a whole agent: what it leaves in the log and the lease, and how it fails."""

from __future__ import annotations

import pytest

from az_agent.agent.daemon import Agent
from az_agent.agent.errors import OperationFailed
from az_agent.agent.operations.requests import PauseRequest
from az_agent.agent.operations.states import AgentState
from az_agent.drivers.errors import Unavailable
from az_agent.state import LeaseState
from az_agent.state.keys import lease_key
from tests.integration.agent_operations.conftest import ZONE, Rig, lease_record, until


def leading(agent: Agent) -> bool:
    return agent.keeper.is_leader and agent.session is not None


async def test_a_release_that_cannot_be_written_fails_the_pause(rig: Rig) -> None:
    """A failed write is not "the lease was no longer ours": the pause fails, retryable."""
    async with rig.running() as agent:
        await until(lambda: leading(agent), "the agent to lead")

        async def refuse_release(op: str, key: str) -> None:
            operation = agent.operation
            releasing = operation is not None and operation.phase == "release-lease"
            if op == "put" and key == lease_key(ZONE) and releasing:
                raise Unavailable("injected: the bucket is down while the lease is released")

        rig.store.before = refuse_release
        with pytest.raises(OperationFailed) as failed:
            await agent.pause(PauseRequest())
        assert agent.state is AgentState.FAILED
        assert failed.value.detail.startswith("release-lease: Unavailable"), failed.value.detail

        rig.store.before = Rig.no_hook
        await until(lambda: leading(agent), "the failed pause to lead and back up again")
        status, body = await agent.pause(PauseRequest())
        assert (status, body["state"]) == (200, "PAUSED")
        phases = {p["name"]: p for p in body["operation"]["phases"]}
        assert phases["release-lease"]["detail"] == "lease paused"
        assert (await lease_record(rig.store)).state is LeaseState.PAUSED
