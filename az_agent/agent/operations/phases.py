"""The one phase runner of pause, activate and resume: each phase journaled as it starts and
ends, so an agent restarted mid-operation skips what is done and redoes only the phase it was in
(every phase is idempotent for that reason)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.journal import Operation
from az_agent.agent.operations.states import Request
from az_agent.drivers.errors import DriverError
from az_agent.state import StateError

log = logging.getLogger(__name__)

Step = tuple[str, Callable[[], Awaitable[str]] | str]
"""A phase: its name in the operation, and the work, which returns a one-line detail; or that
detail alone when the phase has nothing to do here (nothing configured, or done before the
operation began): it is marked done without a journal write of its own, the next one carries
it (a write per empty phase cost an activation a round trip to the bucket each)."""

EXPECTED_FAILURES: tuple[type[Exception], ...] = (DriverError, StateError, TimeoutError)
"""Failures an operator can act on from their message alone (logged without a traceback)."""


async def run_phases(
    agent: AgentContext,
    op: Operation,
    steps: Sequence[Step],
    *,
    through: str | None = None,
    final_save: bool = True,
) -> None:
    """Run the phases of ``op`` that are not done, in order; stop after ``through`` if given.

    A phase that raises leaves ``op`` at that phase (journaled as running) and the exception
    propagates: the caller decides between :func:`fail` and answering the request.

    One journal write per phase, made while the phase works (it records the previous phase
    done and this one running), and one at the end: the record is advisory, a phase not yet
    recorded done is redone on resumption, and a write per phase boundary awaited on the way
    cost an activation about twenty round trips to the bucket. ``final_save=False`` leaves the
    last phase's end to the caller's next write (:meth:`~.journal.OperationJournal.finish`, or
    the next phases' run): unrecorded, that phase is redone on resumption like any other.
    """
    for name, step in steps:
        if op.is_done(name):
            pass
        elif isinstance(step, str):
            agent.journal.begin_phase(op, name)
            agent.journal.end_phase(op, name, step)
            agent.deps.metrics.set_phase_duration(op.kind, name, 0.0)
        else:
            agent.journal.begin_phase(op, name)
            saving = asyncio.ensure_future(agent.journal.save(op))
            try:
                detail = await step()
            except asyncio.CancelledError:
                saving.cancel()  # the agent is stopping: no journal write outlives it
                with contextlib.suppress(asyncio.CancelledError):
                    await saving  # its writes (tasks of their own) have ended, not just begun to
                raise
            except BaseException:
                await saving  # it lands before the caller records the failure
                raise
            await saving  # a save never raises (logged)
            agent.journal.end_phase(op, name, detail)
            seconds = op.get_phase(name).seconds or 0.0
            agent.deps.metrics.set_phase_duration(op.kind, name, seconds)
        if name == through:
            break
    if final_save:
        await agent.journal.save(op)  # the last phase's end (a failure's is the caller's to write)


async def fail(
    agent: AgentContext,
    op: Operation,
    exc: Exception,
    *,
    expected: tuple[type[Exception], ...] = EXPECTED_FAILURES,
) -> None:
    """End ``op`` FAILED with its reason (retryable by POSTing again), and the agent with it."""
    unexpected = not isinstance(exc, expected)
    log.error("%s failed in phase %s: %s", op.kind, op.phase, exc, exc_info=unexpected)
    await agent.journal.finish(op, f"{op.phase}: {type(exc).__name__}: {exc}")
    agent.deps.metrics.errors.labels(kind=op.kind).inc()
    agent.set_state(Request.FAIL)
