"""The phase runner's journal writes: none of its own for a phase with nothing to do, and a
finished operation's two records written together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.journal import Operation, OperationJournal
from az_agent.agent.operations.phases import Step, run_phases
from tests.fakeclock import FakeClock
from tests.unit.state.helpers import FaultyStore, Overlap, file_store

ZONE = "az2"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    opened = await file_store(tmp_path / "bucket")
    yield opened
    await opened.close()


def agent_on(store: FaultyStore) -> tuple[AgentContext, OperationJournal]:
    journal = OperationJournal(store, ZONE, FakeClock())
    agent = SimpleNamespace(journal=journal, deps=SimpleNamespace(metrics=AgentMetrics(ZONE)))
    return cast(AgentContext, agent), journal


async def test_a_phase_with_nothing_to_do_is_recorded_by_the_next_write(
    store: FaultyStore,
) -> None:
    agent, journal = agent_on(store)
    op = Operation.start("activate", ["idle", "also-idle", "work"], FakeClock().now())

    async def work() -> str:
        return "worked"

    steps: list[Step] = [
        ("idle", "nothing configured"),
        ("also-idle", "nothing either"),
        ("work", work),
    ]
    await run_phases(agent, op, steps, final_save=False)
    assert store.calls["put"] == 1  # the working phase's, nothing for the idle ones or the end
    saved = await journal.load_current()
    assert saved is not None
    assert [p.status for p in saved.phases] == ["done", "done", "running"]
    assert saved.get_phase("idle").detail == "nothing configured"
    assert [p.status for p in op.phases] == ["done", "done", "done"]


async def test_a_finished_operation_writes_its_two_records_together(store: FaultyStore) -> None:
    _, journal = agent_on(store)
    op = Operation.start("activate", ["work"], FakeClock().now())
    store.before = overlap = Overlap(("put",))
    await journal.finish(op)
    assert store.calls["put"] == 2  # current.json and the history copy
    assert overlap.peak == 2


async def test_a_cancelled_phase_leaves_no_journal_write_running(store: FaultyStore) -> None:
    """The agent stops while a phase works and its journal write waits on the bucket: when
    the cancellation has propagated, that write (and the tasks it spawned) has ended too."""
    agent, _ = agent_on(store)
    op = Operation.start("activate", ["work"], FakeClock().now())
    bucket_slow, writing = asyncio.Event(), asyncio.Event()

    async def slow_put(op_name: str, key: str) -> None:
        if op_name == "put":
            writing.set()
            await bucket_slow.wait()

    async def work() -> str:
        await asyncio.Event().wait()
        return "never"

    store.before = slow_put
    running = asyncio.ensure_future(run_phases(agent, op, [("work", work)]))
    await writing.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not others, others
