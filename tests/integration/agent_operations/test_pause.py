"""``/pause`` on a whole agent: what it leaves in the log and the lease, and how it fails."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.config import AgentConfig
from az_agent.agent.daemon import Agent
from az_agent.agent.errors import OperationFailed, WrongState
from az_agent.agent.leadership.loops import SegmentBackup
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.operations.journal import current_key
from az_agent.agent.operations.requests import PauseRequest
from az_agent.agent.operations.states import AgentState
from az_agent.drivers.errors import Unavailable
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.state import LeaseState, PausedPayload, SegmentPayload, SystemClock
from az_agent.state.keys import lease_key
from az_agent.state.log import checkpoint_seqs
from tests.integration.agent_operations.conftest import (
    REALTIME_TABLE,
    ZONE,
    Rig,
    commit_segments,
    lease_record,
    log_entries,
    until,
)
from tests.unit.state.helpers import segment


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


class LateSegment:
    """The real segment loop, plus one segment whose upload is still in flight when the pause
    writes its handover: ``arrived`` lets it commit, ``done`` says it committed or was stopped."""

    def __init__(self, inner: SegmentBackup) -> None:
        self.inner = inner
        self.arrived = asyncio.Event()
        self.done = asyncio.Event()

    async def run(self, session: LeaderSession) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.inner.run(session))
            group.create_task(self._late(session))

    async def _late(self, session: LeaderSession) -> None:
        try:
            payload = segment(ZONE, f"{REALTIME_TABLE}__0__99__late", table=REALTIME_TABLE)
            await session.store.put(payload.key, b"tarball")
            await self.arrived.wait()
            await session.commit(payload)
        finally:
            self.done.set()

    async def flush(self, session: LeaderSession) -> int:
        return await self.inner.flush(session)

    def status(self) -> dict[str, Any]:
        return self.inner.status()

    def rpo_seconds(self) -> float:
        return self.inner.rpo_seconds()


async def test_the_handover_is_the_last_entry_even_with_a_segment_racing(rig: Rig) -> None:
    """DESIGN: ``paused`` is written after every backup loop has stopped, the term's last entry."""
    racing: list[LateSegment] = []

    def backup(pinot: HttpPinotController, config: AgentConfig) -> SegmentBackup:
        inner = SegmentBackupLoop(pinot, config.service.pinot, AgentMetrics(ZONE), SystemClock())
        racing.append(LateSegment(inner))
        return racing[0]

    async with rig.running(segment_backup=backup) as agent:
        await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
        late = racing[0]

        async def arrive_after_handover(op: str, key: str) -> None:
            operation = agent.operation
            if op != "put" or key != current_key(ZONE) or operation is None:
                return
            if operation.get_phase("write-handover").status == "done" and not late.arrived.is_set():
                late.arrived.set()  # the upload finishes now: a live loop commits it next
                await asyncio.wait_for(late.done.wait(), 10)

        rig.store.after = arrive_after_handover
        status, body = await agent.pause(PauseRequest())
        assert (status, body["state"]) == (200, "PAUSED"), body
        assert late.arrived.is_set(), "the segment arrived during the pause"

    entries = await log_entries(rig.store)
    kinds = [type(e.payload).__name__ for e in entries]
    assert isinstance(entries[-1].payload, PausedPayload), kinds
    assert not any(
        isinstance(e.payload, SegmentPayload) and e.payload.segment.endswith("__late")
        for e in entries
    ), "nothing of the paused term is committed after its handover"


async def test_the_handover_is_checkpointed_so_the_activation_reads_one_object(rig: Rig) -> None:
    async with rig.running() as agent:
        await until(lambda: leading(agent), "the agent to lead")
        await commit_segments(agent, 3)
        status, body = await agent.pause(PauseRequest())
        assert (status, body["state"]) == (200, "PAUSED"), body
    entries = await log_entries(rig.store)
    assert isinstance(entries[-1].payload, PausedPayload)
    assert (await checkpoint_seqs(rig.store, ZONE))[0] == entries[-1].seq
    phases = {p["name"]: p for p in body["operation"]["phases"]}
    detail = phases["write-handover"]["detail"]
    assert detail.endswith(f"checkpoint at entry {entries[-1].seq}"), detail


async def test_a_pause_failing_after_the_loops_stopped_backs_up_again(rig: Rig) -> None:
    """The handover cannot be written: FAILED, and a fresh session runs the loops again."""
    async with rig.running() as agent:
        await until(lambda: leading(agent), "the agent to lead")
        first = agent.session

        async def refuse_handover(op: str, key: str) -> None:
            operation = agent.operation
            handing_over = operation is not None and operation.phase == "write-handover"
            if op == "put" and key.startswith(f"{ZONE}/log/") and handing_over:
                raise Unavailable("injected: the bucket is down during the handover")

        rig.store.before = refuse_handover
        with pytest.raises(OperationFailed) as failed:
            await agent.pause(PauseRequest())
        assert failed.value.detail.startswith("write-handover: Unavailable"), failed.value.detail
        assert agent.deps.segment_backup.status()["leading"] is False, "the loops were stopped"

        rig.store.before = Rig.no_hook
        await until(
            lambda: (
                leading(agent)
                and agent.session is not first
                and agent.deps.segment_backup.status()["leading"]
            ),
            "a fresh session backing up while the failed pause waits to be retried",
        )
        assert agent.state is AgentState.FAILED


async def test_a_repeated_pause_answers_200_with_the_state_and_changes_nothing(rig: Rig) -> None:
    """A client that lost the first answer retries: the pause already holds."""
    async with rig.running() as agent:
        await until(lambda: leading(agent), "the agent to lead")
        status, first = await agent.pause(PauseRequest())
        assert (status, first["state"]) == (200, "PAUSED"), first
        before = [(i.key, i.version) async for i in rig.store.inner.list()]

        status, again = await agent.pause(PauseRequest(force=True))
        assert (status, again["state"], again["alreadyHeld"]) == (200, "PAUSED", True), again
        assert again["operation"]["id"] == first["operation"]["id"], "no new operation"
        assert agent.state is AgentState.PAUSED
        assert [(i.key, i.version) async for i in rig.store.inner.list()] == before


async def test_status_shows_a_recovery_point_only_while_backing_up(rig: Rig) -> None:
    """/status says what the metrics say: a paused zone backs nothing up, so it has no RPO
    (null), rather than a 0 that reads as "nothing to lose" or an age that keeps climbing."""
    async with rig.running() as agent:
        await until(lambda: leading(agent), "the agent to lead")
        rpo = agent.status()["rpoSeconds"]
        assert isinstance(rpo["segments"], float), rpo
        status, _ = await agent.pause(PauseRequest())
        assert status == 200
        assert agent.status()["rpoSeconds"] == {"segments": None, "postgres": None}


async def test_a_replica_that_does_not_lead_refuses_the_pause_before_touching_pinot(
    rig: Rig,
) -> None:
    """Two replicas of a zone (the chart runs 2): ``/pause`` reaching the one that does not hold
    the lease is refused (409 naming the leader) before anything runs; ingestion goes on."""
    async with rig.running() as leader:
        await until(lambda: leading(leader), "the first replica to lead")
        async with rig.running() as replica:
            assert replica.state is AgentState.ACTIVE
            assert not replica.keeper.is_leader
            with pytest.raises(WrongState) as refused:
                await replica.pause(PauseRequest())
            assert f"held by {leader.holder}" in refused.value.detail
            assert replica.state is AgentState.ACTIVE
            assert replica.operation is None
            async with HttpPinotController(rig.pinot.url) as pinot:
                assert not (await pinot.pause_status(REALTIME_TABLE)).paused
        assert leader.state is AgentState.ACTIVE
        assert leading(leader)
