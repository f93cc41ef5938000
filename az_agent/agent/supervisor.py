"""The crash guard of every long-running loop (kopf's lesson): named tasks, restarted on crash.

A loop that raises is logged with its traceback, counted in ``az_agent_loop_restarts_total
{loop}`` and started again after a backoff delay (:func:`~az_agent.agent.backoff.backoff_delay`,
1 s doubling to 60 s; the count starts over once a run has lasted longer than the ceiling). A
loop that returns is done and not restarted. Cancellation is never caught: the owner's task
group stops and awaits the loops.

What no restart fixes is not retried: a ``LogCorrupted`` (``SplitBrain`` among them) goes to the
owner's ``on_fatal(loop, exc)``, which puts the agent in ``FAILED`` with the reason, and the
loop ends. The process keeps serving either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from az_agent.agent.backoff import backoff_delay
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.state import Clock, LogCorrupted

log = logging.getLogger(__name__)

RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0

Loop = Callable[[], Awaitable[None]]
"""A loop's factory: called again for every restart."""


class Supervisor:
    """Runs named loops in an owner's task group and restarts them when they crash."""

    def __init__(
        self,
        metrics: AgentMetrics,
        clock: Clock,
        on_fatal: Callable[[str, LogCorrupted], None],
        *,
        min_delay: float = RESTART_MIN_SECONDS,
        max_delay: float = RESTART_MAX_SECONDS,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._on_fatal = on_fatal
        self._min_delay = min_delay
        self._max_delay = max_delay

    def start(self, group: asyncio.TaskGroup, name: str, loop: Loop) -> asyncio.Task[None]:
        """Run ``loop()`` as task ``name`` of ``group``, under :meth:`supervise`."""
        return group.create_task(self.supervise(name, loop), name=name)

    async def supervise(self, name: str, loop: Loop) -> None:
        """Run ``loop()`` until it returns, restarting it after each crash (see the module
        docstring); returns when it returns or a fatal error ended it."""
        attempt = 0
        while True:
            started = self._clock.monotonic()
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                fatal = _fatal_cause(exc)
                if fatal is not None:
                    log.error("loop %s stopped: %s: %s", name, type(fatal).__name__, fatal)
                    self._on_fatal(name, fatal)
                    return
                if self._clock.monotonic() - started > self._max_delay:
                    attempt = 0
                attempt += 1
                delay = backoff_delay(attempt, self._min_delay, self._max_delay)
                log.exception("loop %s crashed (restart %d in %.1fs)", name, attempt, delay)
                self._metrics.loop_restarts.labels(loop=name).inc()
                await self._clock.sleep(delay)
            else:
                return


def _fatal_cause(exc: Exception) -> LogCorrupted | None:
    """The ``LogCorrupted`` that ended a loop, alone or among a task group's errors."""
    if isinstance(exc, ExceptionGroup):
        matched, _ = exc.split(LogCorrupted)
        return None if matched is None else _fatal_cause(matched.exceptions[0])
    return exc if isinstance(exc, LogCorrupted) else None


async def to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Await ``work`` to its end even if the caller is cancelled again meanwhile (an impatient
    second SIGTERM while the lease is released on shutdown).

    ``asyncio.shield`` alone keeps the inner task going but lets the caller move on, and the
    caller would then close the store under it and exit before the release lands. The
    cancellation that is being handled still propagates once ``work`` is done.
    """
    task = asyncio.ensure_future(work)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()
