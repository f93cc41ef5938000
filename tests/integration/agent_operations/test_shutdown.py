"""Stopping an active agent checkpoints its catalog and releases its lease, and a second
cancellation (an impatient second SIGTERM) does not cut that release short."""

from __future__ import annotations

import asyncio
import contextlib

from az_agent.drivers.errors import Unavailable
from az_agent.state import LeaseState, load_catalog
from az_agent.state.keys import checkpoint_prefix, lease_key
from az_agent.state.log import checkpoint_seqs
from tests.integration.agent_operations.conftest import (
    ZONE,
    Rig,
    commit_segments,
    lease_record,
    log_entries,
    until,
)


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


async def test_a_clean_stop_checkpoints_the_entries_its_sessions_wrote(rig: Rig) -> None:
    """The next reader of the zone (the other zone's activation, this agent restarted) reads
    one checkpoint, not an entry per segment the agent backed up since the last one."""
    async with rig.running() as agent:
        await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
        await commit_segments(agent, 5)
        assert await checkpoint_seqs(rig.store, ZONE) == []
    entries = await log_entries(rig.store)
    assert (await checkpoint_seqs(rig.store, ZONE))[0] == entries[-1].seq
    catalog = await load_catalog(rig.store, ZONE)
    assert (catalog.checkpoint_seq, catalog.last_seq) == (entries[-1].seq, entries[-1].seq)
    assert catalog.segment_count == 5
    assert (await lease_record(rig.store)).state is LeaseState.RELEASED


async def test_a_stop_whose_checkpoint_fails_still_releases_the_lease(rig: Rig) -> None:
    async with rig.running() as agent:
        await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")

        async def refuse_checkpoints(op: str, key: str) -> None:
            if op == "put" and key.startswith(checkpoint_prefix(ZONE)):
                raise Unavailable("injected: the checkpoint cannot be written")

        rig.store.before = refuse_checkpoints
    assert await checkpoint_seqs(rig.store, ZONE) == []
    assert (await lease_record(rig.store)).state is LeaseState.RELEASED
