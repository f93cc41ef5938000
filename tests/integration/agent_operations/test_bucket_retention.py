"""The leader runs bucket retention inside its session, next to the backup loops."""

from __future__ import annotations

from az_agent.agent.backup.retention import RetentionLoop
from az_agent.agent.config import BucketRetentionSettings
from az_agent.state import SystemClock
from az_agent.state.log import checkpoint_seqs
from tests.integration.agent_operations.conftest import ZONE, Rig, until


async def test_the_leader_runs_retention_on_its_schedule(rig: Rig) -> None:
    retention = RetentionLoop(BucketRetentionSettings(interval_minutes=0.002), SystemClock())
    async with rig.running(retention=retention) as agent:
        await until(lambda: retention.last is not None, "a retention pass in the session")
        assert agent.leadership.session is not None
        assert await checkpoint_seqs(rig.store, ZONE)  # the pass checkpointed the log
