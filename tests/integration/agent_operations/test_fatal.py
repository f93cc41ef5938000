"""What no retry fixes does not kill the agent: a split brain met by a backup loop, or a corrupt
log met at start-up, leaves it FAILED with the reason in /status, still serving, and
writing nothing more."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from az_agent.agent.config import AgentConfig
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.operations.states import AgentState
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.state import LogEntry, SchemaPayload, SystemClock
from az_agent.state.keys import log_key
from tests.integration.agent_operations.conftest import ZONE, Rig, log_entries, until


def _schema(name: str) -> SchemaPayload:
    return SchemaPayload(name=name, key=f"{ZONE}/schemas/{name}.json", sha256="0" * 64)


class CommitOnCue:
    """A segment backup that commits one entry through the real session when told to."""

    def __init__(self) -> None:
        self.session: LeaderSession | None = None
        self.cue = asyncio.Event()
        self.runs = 0

    async def run(self, session: LeaderSession) -> None:
        self.runs += 1
        self.session = session
        await self.cue.wait()
        await session.commit(_schema("events"))
        await asyncio.Event().wait()

    async def flush(self, session: LeaderSession) -> int:
        return 0

    def status(self) -> dict[str, Any]:
        return {}

    def rpo_seconds(self) -> float:
        return 0.0


async def test_split_brain_in_a_session_ends_failed_with_the_reason(rig: Rig) -> None:
    probe = CommitOnCue()

    def backup(pinot: HttpPinotController, config: AgentConfig) -> CommitOnCue:
        return probe

    async with rig.running(segment_backup=backup) as agent:
        await until(lambda: probe.session is not None, "the session's backup loop")
        session = probe.session
        assert session is not None
        # Another writer under this session's own (term, epoch): what only a split brain does.
        intruder = LogEntry(
            seq=session.catalog.last_seq + 1,
            epoch=session.epoch,
            term=session.term,
            writer="az1-agent-intruder",
            nonce=uuid.uuid4().hex,
            time=SystemClock().now(),
            payload=_schema("other"),
        )
        await rig.store.inner.put(log_key(ZONE, intruder.seq), intruder.encode())
        probe.cue.set()

        await until(lambda: agent.state is AgentState.FAILED, "FAILED")
        await until(lambda: agent.session is None, "the session ended")
        status = agent.status()
        assert status["state"] == "FAILED"
        assert status["failure"].startswith("segment-backup: SplitBrain: "), status["failure"]
        assert "az1-agent-intruder" in status["failure"]
        assert rig.task is not None
        assert not rig.task.done(), "the agent keeps running"
        ok, _ = agent.healthz()
        assert ok
        metrics = agent.metrics_text()[0].decode()
        assert 'az_agent_state{state="FAILED"} 1.0' in metrics
        assert 'az_agent_loop_restarts_total{loop="segment-backup"}' not in metrics
        assert probe.runs == 1, "not restarted: no retry fixes a split brain"
        assert [e.writer for e in await log_entries(rig.store)][-1] == "az1-agent-intruder"


async def test_corrupt_log_at_start_up_ends_failed_with_the_reason(rig: Rig) -> None:
    async with rig.running() as agent:
        await until(lambda: agent.session is not None, "leading")
    newest = (await log_entries(rig.store))[-1]
    await rig.store.inner.put(log_key(ZONE, newest.seq + 1), b"{not an entry")

    async with rig.running() as agent:  # the restart meets the corrupt entry
        await until(lambda: agent.state is AgentState.FAILED, "FAILED")
        assert agent.failure is not None
        # The lease round reads the log's tail first: it meets the corrupt entry.
        assert agent.failure.startswith("lease: LogCorrupted: "), agent.failure
        assert f"{newest.seq + 1:020d}.json: not a valid log entry" in agent.failure
        assert "\n" not in agent.failure, "one line in /status"
        assert agent.status()["failure"] == agent.failure
        assert agent.session is None
        assert rig.task is not None
        assert not rig.task.done(), "the agent keeps running"


class CrashesOnce(CommitOnCue):
    """A segment backup whose first run crashes with a bug, not a dependency error."""

    async def run(self, session: LeaderSession) -> None:
        if self.runs == 0:
            self.runs += 1
            raise KeyError("a bug in the loop")
        await super().run(session)


async def test_a_crashed_backup_loop_is_restarted_and_counted(rig: Rig) -> None:
    probe = CrashesOnce()

    def backup(pinot: HttpPinotController, config: AgentConfig) -> CommitOnCue:
        return probe

    async with rig.running(segment_backup=backup) as agent:
        await until(lambda: probe.runs == 2, "the restart", within=10)
        await until(lambda: probe.session is not None, "the restarted loop in the session")
        probe.cue.set()
        deadline = time.monotonic() + 20
        while (await log_entries(rig.store))[-1].payload.kind != "schema":
            assert time.monotonic() < deadline, "the restarted loop never committed"
            await asyncio.sleep(0.05)
        metrics = agent.metrics_text()[0].decode()
        assert 'az_agent_loop_restarts_total{loop="segment-backup"} 1.0' in metrics
        assert agent.state is AgentState.ACTIVE
        assert agent.failure is None
