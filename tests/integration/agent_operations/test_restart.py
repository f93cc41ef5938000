"""An agent restarted in the middle of a pause: it comes back FAILED, and ``/resume`` from
there brings ingestion back (the pause had paused it) instead of leaving it paused for ever."""

from __future__ import annotations

import asyncio
import contextlib

from az_agent.agent.operations.journal import current_key
from az_agent.agent.operations.requests import PauseRequest
from az_agent.agent.operations.states import AgentState
from az_agent.drivers.pinot.http import HttpPinotController
from tests.integration.agent_operations.conftest import TABLE, ZONE, Rig, until


async def is_paused(rig: Rig) -> bool:
    async with HttpPinotController(rig.pinot.url) as pinot:
        return (await pinot.pause_status(TABLE)).paused


async def test_restart_mid_pause_then_resume_brings_ingestion_back(rig: Rig) -> None:
    async with rig.running() as agent:
        await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
        stuck = asyncio.Event()

        async def hang_in_flush(op: str, key: str) -> None:
            operation = agent.operation
            flushing = operation is not None and operation.phase == "flush-segments"
            if op == "put" and key == current_key(ZONE) and flushing:
                stuck.set()
                await asyncio.Event().wait()  # the process freezes here until it is stopped

        rig.store.before = hang_in_flush
        pause = asyncio.create_task(agent.pause(PauseRequest()))
        await asyncio.wait_for(stuck.wait(), 20)
        assert await is_paused(rig), "the pause got as far as pausing ingestion"
    with contextlib.suppress(asyncio.CancelledError):
        await pause  # the agent stopped under it (202: the operation never finished)
    rig.store.before = Rig.no_hook

    async with rig.running() as agent:  # the restart
        recovered = agent.state
        operation = agent.operation
        status, body = await agent.resume()
        assert status == 200, body
        assert not await is_paused(rig), "ingestion stays paused for ever after the restart"
        assert body["tablesResumed"] == [TABLE]
        assert recovered is AgentState.FAILED
        assert operation is not None
        assert (operation.kind, operation.status) == ("pause", "failed")
        assert "restart" in (operation.error or "")
        assert agent.state is AgentState.ACTIVE
        await until(lambda: agent.keeper.is_leader, "leading again", within=30)

    async with rig.running() as agent:  # a later restart does not go back to FAILED
        assert agent.state is AgentState.ACTIVE


async def test_restart_after_the_lease_was_paused_recovers_the_pause_as_done(rig: Rig) -> None:
    async with rig.running() as agent:
        await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
        stuck = asyncio.Event()

        async def hang_after_release(op: str, key: str) -> None:
            operation = agent.operation
            released = operation is not None and operation.is_done("release-lease")
            if op == "put" and key == current_key(ZONE) and released:
                stuck.set()
                await asyncio.Event().wait()

        rig.store.before = hang_after_release
        pause = asyncio.create_task(agent.pause(PauseRequest()))
        await asyncio.wait_for(stuck.wait(), 20)
    with contextlib.suppress(asyncio.CancelledError):
        await pause
    rig.store.before = Rig.no_hook

    async with rig.running() as agent:
        assert agent.state is AgentState.PAUSED
        assert agent.operation is not None
        assert (agent.operation.kind, agent.operation.status) == ("pause", "succeeded")
