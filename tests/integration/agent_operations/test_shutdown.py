"""Stopping an active agent releases its lease, and a second cancellation (an impatient
second SIGTERM) does not cut that release short."""

from __future__ import annotations

import asyncio
import contextlib

from az_agent.state import LeaseState
from az_agent.state.keys import lease_key
from tests.integration.agent_operations.conftest import ZONE, Rig, lease_record, until


async def test_run_returns_only_once_the_lease_release_landed(rig: Rig) -> None:
    async with rig.running() as agent:
        await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
        releasing, let_go = asyncio.Event(), asyncio.Event()

        async def hold_release(op: str, key: str) -> None:
            # The release ends leadership before its write; renewals happen while leading.
            if op == "put" and key == lease_key(ZONE) and not agent.keeper.is_leader:
                releasing.set()
                await let_go.wait()

        rig.store.before = hold_release
        task = rig.task
        assert task is not None
        task.cancel()
        await asyncio.wait_for(releasing.wait(), 10)
        task.cancel()  # the second, impatient one
        for _ in range(20):  # loop turns enough to deliver it and for run() to return if it would
            await asyncio.sleep(0)
        assert not task.done(), "run() returned with the release still in flight"
        let_go.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert (await lease_record(rig.store)).state is LeaseState.RELEASED
