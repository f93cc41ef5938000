"""Property-based interleavings of two or three agents sharing one zone's lease and log.

Hypothesis draws a schedule on one simulated timeline: election rounds, appends, releases,
pauses handed over by ``take_over``, crashes (a new incarnation with a new holder id), and per
agent storage faults: requests that fail before reaching the store, writes whose response is
lost after they landed, requests that stall while time passes (a slow network or a GC pause),
and processes frozen mid-request (SIGSTOP) until a later "resume" step, possibly after a
take-over. After every step at most one agent may believe it is leader; at the end the log
must be gapless, its epochs must never decrease (so nothing older follows a fence), each
epoch must belong to one writer, and nothing a fenced writer tried may be in the catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from az_agent.drivers.errors import DriverError, Unavailable
from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.factory import open_object_store
from az_agent.state import (
    Fenced,
    LeaseHeld,
    LeaseKeeper,
    LeaseSettings,
    LeaseState,
    LogEntry,
    LogWriter,
    NotLeader,
    load_catalog,
    read_entries,
)
from az_agent.state.keys import log_prefix
from tests.conftest import BackendPool
from tests.fakeclock import FakeClock, Timeline
from tests.unit.state.helpers import FaultyStore, segment

ZONE = "az1"
SETTINGS = LeaseSettings()
ACTIONS = ["run"] * 6 + ["stop", "resume", "resume", "release", "pause", "take_over", "crash"]
"""``run``: one round of an agent's main loop, an election round then appends if leader.
``stop``: the agent's next action freezes at a random storage call (before it is sent or after
it landed) until ``resume``."""


@dataclass(frozen=True)
class Faults:
    unavailable: float
    lost_response: float
    slow: float
    freeze: float


@dataclass
class Agent:
    index: int
    faults: Faults
    mono_offset: float
    wall_offset: timedelta
    guarded: bool = True
    """False: appends without asking its lease, so only the log's fencing can stop it."""
    incarnation: int = 0
    freeze_at: int | None = None
    name: str = ""
    keeper: LeaseKeeper | None = None
    writer: LogWriter | None = None
    store: FaultyStore | None = None
    frozen: asyncio.Task[None] | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Simulation:
    def __init__(self, store: ObjectStore, seed: int, agents: list[Agent]) -> None:
        self.shared = store
        self.timeline = Timeline()
        self.rng = random.Random(seed)
        self.agents = agents
        self.appended: list[LogEntry] = []
        self.refused: set[str] = set()
        self.counter = 0
        for agent in agents:
            self.spawn(agent)

    def spawn(self, agent: Agent) -> None:
        agent.incarnation += 1
        agent.name = f"agent{agent.index}-{agent.incarnation}"
        clock = FakeClock(
            self.timeline,
            auto_advance=True,
            monotonic_offset=agent.mono_offset,
            wall_offset=agent.wall_offset,
        )
        agent.store = FaultyStore(self.shared)
        agent.store.before = self._hook(agent, before=True)
        agent.store.after = self._hook(agent, before=False)
        agent.keeper = LeaseKeeper(agent.store, ZONE, agent.name, SETTINGS, clock=clock)
        agent.writer = None
        agent.freeze_at = None

    def _hook(self, agent: Agent, *, before: bool) -> Callable[[str, str], Awaitable[None]]:
        async def hook(op: str, key: str) -> None:
            faults, roll = agent.faults, self.rng.random
            if before and roll() < faults.unavailable:
                raise Unavailable(f"injected: {op} {key}")
            if roll() < faults.slow:
                self.timeline.advance(self.rng.uniform(0.0, 20.0))
            if self._freezes(agent) and not agent.wake.is_set():
                agent.stopped.set()
                await agent.wake.wait()
            if not before and op == "put" and roll() < faults.lost_response:
                raise Unavailable(f"injected lost response: {op} {key}")

        return hook

    def _freezes(self, agent: Agent) -> bool:
        if agent.freeze_at is not None:
            agent.freeze_at -= 1
            if agent.freeze_at < 0:
                agent.freeze_at = None
                return True
        return self.rng.random() < agent.faults.freeze

    async def step(self, action: str, index: int, seconds: float) -> None:
        if action == "advance":
            self.timeline.advance(seconds)
            return
        agent = self.agents[index % len(self.agents)]
        if action == "crash":
            await self._crash(agent)
        elif action == "stop":
            agent.freeze_at = self.rng.randint(0, 4)
        elif action == "resume":
            if agent.frozen is not None:
                agent.wake.set()
                await self._until_done_or_frozen(agent, agent.frozen)
        elif agent.frozen is None:  # a stopped process does nothing else
            agent.stopped.clear()
            agent.wake.clear()
            task = asyncio.create_task(self._act(agent, action))
            await self._until_done_or_frozen(agent, task)

    async def _until_done_or_frozen(self, agent: Agent, task: asyncio.Task[None]) -> None:
        agent.frozen = None
        stopped = asyncio.create_task(agent.stopped.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopped
        agent.stopped.clear()
        if task.done():
            task.result()  # SplitBrain, LogCorrupted or a bug: the example fails
        else:
            agent.frozen = task

    async def _crash(self, agent: Agent) -> None:
        if agent.frozen is not None:
            agent.frozen.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await agent.frozen
            agent.frozen = None
        self.spawn(agent)

    async def _act(self, agent: Agent, action: str) -> None:
        keeper = agent.keeper
        assert keeper is not None
        try:
            if action == "run":
                await keeper.tick()
                for _ in range(self.rng.randint(0, 3)):
                    await self._append(agent)
            elif action in ("release", "pause"):
                paused = action == "pause"
                await keeper.release(LeaseState.PAUSED if paused else LeaseState.RELEASED)
            elif action == "take_over":
                await keeper.take_over()
        except (DriverError, LeaseHeld, NotLeader):
            pass

    async def _append(self, agent: Agent) -> None:
        keeper, store = agent.keeper, agent.store
        assert keeper is not None
        assert store is not None
        epoch = keeper.epoch
        if epoch is None or (agent.guarded and not keeper.is_leader):
            return
        if agent.writer is None or agent.writer.epoch != epoch:
            agent.writer = LogWriter(
                store,
                ZONE,
                epoch,
                agent.name,
                clock=FakeClock(self.timeline),
                guard=(lambda: keeper.is_leader and keeper.epoch == epoch)
                if agent.guarded
                else None,
            )
        self.counter += 1
        payload = segment(ZONE, f"{agent.name}-{self.counter}", crc=str(self.counter))
        try:
            await agent.writer.write_fence()
            await store.put(payload.key, b"segment bytes")
            self.appended.append(await agent.writer.append(payload))
        except Fenced:
            self.refused.add(payload.segment)

    def believers(self) -> list[str]:
        return [a.name for a in self.agents if a.keeper is not None and a.keeper.is_leader]

    async def stop(self) -> None:
        for agent in self.agents:
            await self._crash(agent)


async def check_log(store: ObjectStore, sim: Simulation) -> None:
    entries = [e async for e in read_entries(store, ZONE, 0)]
    listed = [info.key async for info in store.list(log_prefix(ZONE))]
    assert len(listed) == len(entries), "the log has a gap"
    epochs = [e.epoch for e in entries]
    assert epochs == sorted(epochs), f"epochs went backwards: {epochs}"
    writers: dict[int, set[str]] = {}
    for entry in entries:
        writers.setdefault(entry.epoch, set()).add(entry.writer)
    assert all(len(w) == 1 for w in writers.values()), f"an epoch had two writers: {writers}"
    first_of_epoch = {e.epoch: e for e in reversed(entries)}
    assert all(e.payload.kind == "fence" for e in first_of_epoch.values())
    by_seq = {e.seq: e for e in entries}
    for acknowledged in sim.appended:
        assert by_seq[acknowledged.seq].nonce == acknowledged.nonce
    catalog = await load_catalog(store, ZONE)
    assert catalog.anomalies == 0
    names = {s.name for s in catalog.segments()}
    assert not names & sim.refused, "a fenced write is part of the backup"
    for record in catalog.segments():
        await store.head(record.object_key)  # data always precedes its entry


faults = st.builds(
    Faults,
    unavailable=st.sampled_from([0.0, 0.1, 0.3]),
    lost_response=st.sampled_from([0.0, 0.1, 0.3]),
    slow=st.sampled_from([0.0, 0.05, 0.2]),
    freeze=st.sampled_from([0.0, 0.0, 0.05]),
)
agents = st.lists(
    st.builds(
        Agent,
        index=st.just(0),
        faults=faults,
        mono_offset=st.floats(-1e6, 1e6),
        wall_offset=st.timedeltas(timedelta(days=-400), timedelta(days=400)),
        guarded=st.booleans(),
    ),
    min_size=2,
    max_size=3,
)
steps = st.lists(
    st.tuples(
        st.sampled_from([*ACTIONS, *["advance"] * 5]),
        st.integers(0, 2),
        st.one_of(st.floats(0.1, 6.0), st.floats(6.0, 30.0)),  # seconds, for "advance"
    ),
    min_size=20,
    max_size=100,
)


async def run_schedule(
    backend_pool: BackendPool,
    backend: str,
    crew: list[Agent],
    seed: int,
    schedule: list[tuple[str, int, float]],
) -> None:
    bucket, secrets = await backend_pool.get(backend).new_bucket()
    store = await open_object_store(bucket, secrets)
    for index, agent in enumerate(crew):
        agent.index = index
    sim = Simulation(store, seed, crew)
    try:
        for action, index, seconds in schedule:
            await sim.step(action, index, seconds)
            believers = sim.believers()
            assert len(believers) <= 1, f"two leaders at t={sim.timeline.elapsed}: {believers}"
        await sim.stop()
        await check_log(store, sim)
    finally:
        await sim.stop()
        await store.close()


def schedules(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@schedules(500)
@given(crew=agents, seed=st.integers(0, 2**32), schedule=steps)
async def test_interleavings_on_the_file_store(
    backend_pool: BackendPool, crew: list[Agent], seed: int, schedule: list[tuple[str, int, float]]
) -> None:
    await run_schedule(backend_pool, "file", crew, seed, schedule)


@pytest.mark.parametrize("backend", ["s3", "gcs", "azure"])
@schedules(15)
@given(crew=agents, seed=st.integers(0, 2**32), schedule=steps)
async def test_interleavings_on_an_emulator(
    backend_pool: BackendPool,
    backend: str,
    crew: list[Agent],
    seed: int,
    schedule: list[tuple[str, int, float]],
) -> None:
    await run_schedule(backend_pool, backend, crew, seed, schedule)
