"""``az_agent_operation_started_timestamp_seconds{kind}`` (the "activation stuck" alert reads
it): present with the operation's start while one runs, gone once it ended."""

from __future__ import annotations

import asyncio
import time

from az_agent.agent.daemon import Agent
from az_agent.agent.operations.requests import PauseRequest
from az_agent.state.keys import lease_key
from tests.integration.agent_operations.conftest import ZONE, Rig, until

NAME = "az_agent_operation_started_timestamp_seconds"


def started(agent: Agent, kind: str) -> float | None:
    return agent.deps.metrics.registry.get_sample_value(NAME, {"kind": kind})


async def test_a_running_pause_exports_its_start_until_it_ends(rig: Rig) -> None:
    async with rig.running() as agent:
        await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
        assert started(agent, "pause") is None
        arrived, let_go = asyncio.Event(), asyncio.Event()

        async def hold_release(op: str, key: str) -> None:
            operation = agent.operation
            releasing = operation is not None and operation.phase == "release-lease"
            if op == "put" and key == lease_key(ZONE) and releasing:
                arrived.set()
                await let_go.wait()

        rig.store.before = hold_release
        asked = time.time()
        pausing = asyncio.create_task(agent.pause(PauseRequest()))
        await asyncio.wait_for(arrived.wait(), 20)
        value = started(agent, "pause")
        assert value is not None
        assert asked - 1 <= value <= time.time()
        assert started(agent, "activate") is None
        let_go.set()
        status, body = await pausing
        assert (status, body["state"]) == (200, "PAUSED")
        assert started(agent, "pause") is None
