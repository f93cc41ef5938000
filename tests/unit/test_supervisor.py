"""The loop supervisor on its own: a crash is logged with its traceback, counted and restarted
with backoff; a corrupt log or split brain is handed to the owner and not retried."""

from __future__ import annotations

import asyncio
import logging

import pytest

from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.supervisor import Supervisor
from az_agent.state import LogCorrupted, SplitBrain
from tests.fakeclock import FakeClock


def _restarts(metrics: AgentMetrics, loop: str) -> float:
    value = metrics.registry.get_sample_value("az_agent_loop_restarts_total", {"loop": loop})
    return value or 0.0


async def test_a_crashing_loop_is_logged_counted_and_restarted_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics, clock = AgentMetrics("az1"), FakeClock()
    fatal: list[str] = []
    supervisor = Supervisor(metrics, clock, lambda name, exc: fatal.append(name), max_delay=8.0)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"boom {runs}")

    with caplog.at_level(logging.ERROR, logger="az_agent.agent.supervisor"):
        async with asyncio.TaskGroup() as group:
            task = supervisor.start(group, "segment-backup", flaky)
            # Each restart waits on the clock: nothing runs again until time moves.
            for crashes in (1, 2, 3):
                await clock.timeline.settle(1)
                assert runs == crashes
                clock.advance(8.0)
    assert task.result() is None
    assert runs == 4  # three crashes, three restarts, then it returned: done, not restarted
    assert _restarts(metrics, "segment-backup") == 3
    assert fatal == []
    logged = [r for r in caplog.records if "loop segment-backup crashed" in r.getMessage()]
    assert len(logged) == 3
    assert all(r.exc_info is not None for r in logged), "logged with its traceback"
    # Backoff: delays drawn from half to all of 1, 2, 4 s (capped at 8).
    assert 0.5 + 1 + 2 <= clock.slept <= 1 + 2 + 4


async def test_split_brain_is_fatal_not_retried() -> None:
    metrics, clock = AgentMetrics("az1"), FakeClock()
    fatal: list[tuple[str, LogCorrupted]] = []
    supervisor = Supervisor(metrics, clock, lambda name, exc: fatal.append((name, exc)))
    runs = 0

    async def writer() -> None:
        nonlocal runs
        runs += 1
        raise SplitBrain("az1/log/00000042.json: written by another holder at epoch 3")

    async with asyncio.timeout(10), asyncio.TaskGroup() as group:  # a retry would park forever
        task = supervisor.start(group, "dump-schedule", writer)
    assert task.result() is None
    assert runs == 1
    [(name, exc)] = fatal
    assert name == "dump-schedule"
    assert isinstance(exc, SplitBrain)
    assert _restarts(metrics, "dump-schedule") == 0


async def test_cancellation_is_never_swallowed() -> None:
    metrics, clock = AgentMetrics("az1"), FakeClock()
    supervisor = Supervisor(metrics, clock, lambda name, exc: None)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervisor.supervise("heartbeat", forever))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _restarts(metrics, "heartbeat") == 0
