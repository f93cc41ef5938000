"""The leader's periodic checkpoint counts the entries after the zone's newest checkpoint,
whichever session wrote them: an agent restarted (or crashed) often still checkpoints."""

from __future__ import annotations

import pytest

from az_agent.agent.leadership import zone as leadership
from az_agent.drivers.errors import Unavailable
from az_agent.state.keys import checkpoint_prefix
from az_agent.state.log import checkpoint_seqs
from tests.integration.agent_operations.conftest import (
    ZONE,
    Rig,
    commit_segments,
    log_entries,
    until,
)


async def test_entries_of_an_earlier_session_count_towards_the_next_checkpoint(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leadership, "CHECKPOINT_EVERY_ENTRIES", 4)
    monkeypatch.setattr(leadership, "CHECKPOINT_CHECK_SECONDS", 0.05)

    async def refuse_checkpoints(op: str, key: str) -> None:
        if op == "put" and key.startswith(checkpoint_prefix(ZONE)):
            raise Unavailable("injected: no checkpoint in the first session")

    rig.store.before = refuse_checkpoints
    async with rig.running() as agent:
        await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
        await commit_segments(agent, 3)  # with the fence: 4 entries, none checkpointed
    first = (await log_entries(rig.store))[-1].seq
    assert await checkpoint_seqs(rig.store, ZONE) == []

    rig.store.before = Rig.no_hook
    async with rig.running() as agent:
        await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
        await until(
            lambda: agent.session is not None and agent.session.catalog.checkpoint_seq > 0,
            "a checkpoint without a new entry beyond the new session's fence",
        )
        session = agent.session
        assert session is not None
        assert session.catalog.checkpoint_seq > first
