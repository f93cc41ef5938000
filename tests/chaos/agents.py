"""The agents of a trial: a slot per pod, incarnations started as a process would be.

An agent is built from a configuration the way ``az-agent run`` builds it (``AgentDeps`` of a
real Pinot client, a segment backup loop, no PostgreSQL), except that its bucket handle, Pinot
client and clock are the trial's fault layers (:mod:`.faults`). Every task an incarnation
creates is filed under it (:func:`owned_tasks`), so that one which ignores its cancellation can
be named and ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import weakref
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.config import AgentConfig, parse_config
from az_agent.agent.daemon import Agent, AgentDeps
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.alerts import open_silence_manager
from az_agent.drivers.storage.base import ObjectStore
from tests.chaos.faults import ChaosClock, ChaosPinot, FaultyStore, ProcessGate, Upload, Weather

LEASE = {"ttlSeconds": 3, "renewDeadlineSeconds": 2, "retryPeriodSeconds": 1}
"""On the trial clock: the shortest timings the agent accepts (retry period >= 1 s)."""


@dataclass
class Slot:
    """One agent of a zone (a pod), across its incarnations (process restarts)."""

    name: str
    zone: str
    config: AgentConfig
    incarnation: int = 0
    gate: ProcessGate | None = None
    agent: Agent | None = None
    task: asyncio.Task[None] | None = None
    pinot: ChaosPinot | None = None
    ending: bool = False
    """The engine is ending this incarnation (kill or teardown): its exit is expected."""
    owned: weakref.WeakSet[asyncio.Task[Any]] = field(default_factory=weakref.WeakSet)
    """Every task of the current incarnation (see :data:`OWNER`)."""

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done() and not self.ending

    @property
    def running(self) -> bool:
        return self.alive and self.gate is not None and self.gate.is_running


def agent_config(zone: str, role: str, pinot_url: str, workdir: Path) -> AgentConfig:
    """A zone's configuration; its ``cloudStorage`` is never opened (the engine hands the
    agent the trial's bucket through the fault layer)."""
    raw = {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(workdir / "unused")}}},
        "az-service": {
            "config": {
                "zone": zone,
                "role": role,
                "http": {"host": "127.0.0.1", "port": 0},
                "lease": LEASE,
                "pinot": {"controllerUrl": pinot_url, "pollIntervalSeconds": 1.0},
                "postgres": {"databases": []},
                "rehydration": {"concurrency": 4, "batchSize": 10},
            }
        },
    }
    return parse_config(raw, environ={})


@dataclass(frozen=True, slots=True)
class TrialClock:
    """What every agent clock of a trial shares: its speed, its origin, its wall start."""

    speed: float
    origin: float
    wall_start: datetime


def launch(
    slot: Slot, store: ObjectStore, weather: Weather, clock: TrialClock, uploads: list[Upload]
) -> ChaosPinot:
    """Start a new incarnation of ``slot``'s agent (a process start): its own gate, fault
    layers, metrics and backup loop over the trial's bucket; its Pinot client, returned."""
    slot.incarnation += 1
    gate = ProcessGate(f"{slot.name}#{slot.incarnation}")
    agent_clock = ChaosClock(clock.speed, clock.origin, clock.wall_start, gate)

    def operation() -> str | None:
        op = slot.agent.operation if slot.agent is not None else None
        return op.id if op is not None and op.kind == "activate" else None

    pinot = ChaosPinot(slot.config.service.pinot.controller_url, gate, uploads, operation)
    metrics = AgentMetrics(slot.zone)
    deps = AgentDeps(
        config=slot.config,
        store=FaultyStore(store, gate, weather),
        clock=agent_clock,
        pinot=pinot,
        dumper=None,
        silences=open_silence_manager(""),
        segment_backup=SegmentBackupLoop(
            pinot,
            slot.config.service.pinot,
            metrics,
            agent_clock,
            retry_min_seconds=0.5,
            retry_max_seconds=4.0,
        ),
        database_backup=None,
        metrics=metrics,
    )
    slot.gate, slot.pinot, slot.ending = gate, pinot, False
    slot.agent = Agent(deps)
    owned: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
    context = contextvars.copy_context()
    context.run(OWNER.set, owned)
    slot.task = asyncio.create_task(slot.agent.run(), name=f"agent {gate.name}", context=context)
    slot.task.add_done_callback(retrieve)
    slot.owned = owned
    return pinot


def retrieve(task: asyncio.Task[None]) -> None:
    """A killed agent's loops may fail on its dead store: that is the kill, not news."""
    if not task.cancelled():
        task.exception()


def waits_on(task: asyncio.Task[Any]) -> str:
    """Where a task is parked: its name and the line its coroutine waits at."""
    frames = []
    awaited: Any = task.get_coro()
    while awaited is not None and getattr(awaited, "cr_frame", None) is not None:
        frame = awaited.cr_frame
        frames.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        awaited = getattr(awaited, "cr_await", None)
    return f"{task.get_name()} at {' > '.join(frames[-3:]) or '?'}"


OWNER: contextvars.ContextVar[weakref.WeakSet[asyncio.Task[Any]]] = contextvars.ContextVar(
    "chaos_owner"
)
"""The tasks of one agent incarnation: every task created in its context joins the set (see
:func:`owned_tasks`), so that one which ignores its cancellation can be found and ended."""


@contextlib.contextmanager
def owned_tasks() -> Iterator[None]:
    """Install a task factory that files every new task under the :data:`OWNER` of the context
    it is created in (the previous factory, if any, still makes the task)."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context | None = None,
    ) -> asyncio.Future[Any]:
        if previous is not None:
            make = cast(Any, previous)
            task: asyncio.Future[Any] = (
                make(loop, coro) if context is None else make(loop, coro, context=context)
            )
        else:
            task = asyncio.Task(coro, loop=loop, context=context)
        owner = OWNER.get(None) if context is None else context.get(OWNER)
        if owner is not None and isinstance(task, asyncio.Task):
            owner.add(task)
        return task

    loop.set_task_factory(cast(Any, factory))  # 3.11 passes context= when it has one
    try:
        yield
    finally:
        loop.set_task_factory(previous)


def term_of(agent: Agent) -> int:
    """The term the agent leads under (0 while agents know no terms)."""
    session = agent.session
    return int(getattr(session, "term", 0) or 0) if session is not None else 0
