"""One chaos trial: zones of in-process agents, a Pinot emulator per zone, one bucket, a plan.

A trial (seeded; :class:`TrialSpec`):

1. starts a Pinot controller emulator per zone (the first seeded with a realtime table that
   keeps committing segments) and two agents per zone, built from configurations as
   ``az-agent run`` builds them but wired to the trial's fault layers (:mod:`.faults`): a gated
   bucket handle, a gated Pinot client, a clock ``speed`` times faster than real time (lease
   TTL 3 s, renew deadline 2 s, retry period 1 s, on that clock). No PostgreSQL: no databases.
2. plays its plan (:mod:`.plan`): operator requests through each agent's public methods
   (``pause``, ``activate``, ``resume``), SIGKILL / SIGSTOP / SIGCONT / restarts, brownouts.
   Meanwhile a sampler watches every agent (who leads, under which term, which activations
   finished and what the target Pinot held then) and the primary record.
3. quiesces (brownouts end, stopped agents continue, killed ones restart, running operations
   finish or time out), stops everything, reads the bucket and runs the checker.

Everything is bounded: each step's settling, the quiescence and the whole trial have deadlines
on the trial clock or in real time; nothing waits on a wall-clock sleep for a condition.
Replaying a seed replays the plan exactly: the same requests and signals to the same agents at
the same simulated times, the same brownout windows. The interleaving of the agents' tasks with
real I/O is not reproducible (nor, with it, which requests a brownout hits), so a replay
reproduces a timing-dependent violation often, not always
(``python -m benchmarks.chaos --seed S --trials 1``, repeated).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from az_agent.agent.errors import AgentError
from az_agent.agent.operations.requests import ActivateRequest, PauseRequest
from az_agent.agent.operations.states import AgentState, IllegalTransition
from az_agent.drivers.errors import DriverError, NotFound
from az_agent.drivers.storage.base import ObjectStore
from az_agent.emulators.pinot.cluster import EmulatorOptions
from az_agent.emulators.pinot.seed import SeedTable
from az_agent.emulators.pinot.server import PinotEmulator
from az_agent.state import LeaseRecord, LeaseState, StateError
from az_agent.state.keys import lease_key
from tests.chaos.agents import (
    Slot,
    TrialClock,
    agent_config,
    launch,
    term_of,
    waits_on,
)
from tests.chaos.checker import (
    PRIMARY_KEY,
    ActivationRecord,
    LeaderSample,
    PrimarySample,
    SegmentKey,
    TrialHistory,
    Violation,
    check,
    coverage,
    read_bucket,
)
from tests.chaos.faults import (
    ChaosPinot,
    ProcessGate,
    Signal,
    Upload,
    Weather,
)
from tests.chaos.plan import Op, plan_trial

SPEED = {"file": 10.0, "s3": 5.0}
"""Simulated seconds per real second, per store: an S3 request costs the client a
millisecond or more of CPU (signing, parsing), so on S3 the trial clock runs slower and the
agents' requests keep up with their lease timings."""
TABLE = "events"
REPLICAS = "ab"
SAMPLE_EVERY = 0.2
PRIMARY_EVERY = 0.5
PRODUCE_EVERY = 1.2
SETTLE_WITHIN = 12.0
QUIESCE_WITHIN = 20.0
AFTERMATH = 1.5
"""Simulated seconds of watching once everything is quiet, before stopping."""
CLIENT_TIMEOUT = 15.0
CRASH_RESTART = 1.0
"""Simulated seconds before an agent that exited by itself is started again (a pod restart)."""
STOP_WITHIN = 10.0
"""Real seconds an agent (or emulator) may take to stop once cancelled."""
TRIAL_TIMEOUT = 120.0
"""Real seconds: a trial that takes longer is cut short (an anomaly) and still checked."""


@dataclass(frozen=True, slots=True)
class TrialSpec:
    seed: int
    store: str
    zones: int = 2
    replicas: int = 2
    speed: float = 0.0
    """0: the store's default (``SPEED``)."""

    def __post_init__(self) -> None:
        if self.speed <= 0:
            object.__setattr__(self, "speed", SPEED[self.store])

    def replay(self) -> str:
        return (
            f"python -m benchmarks.chaos --trials 1 --seed {self.seed} --store {self.store} "
            f"--zones {self.zones} --speed {self.speed:g}"
        )


@dataclass
class TrialResult:
    spec: TrialSpec
    violations: list[Violation]
    operations: Counter[str]
    faults: Counter[str]
    anomalies: list[str]
    entries: int
    seconds: float
    trace: list[str]
    checked: Counter[str]
    """What the checker looked at (see :func:`~tests.chaos.checker.coverage`)."""


class Trial:
    """One trial over ``store`` (fresh and empty); :meth:`run` plays it and checks it."""

    def __init__(self, spec: TrialSpec, store: ObjectStore, workdir: Path) -> None:
        self.spec = spec
        self.store = store
        self.workdir = workdir
        self.rng = random.Random(spec.seed ^ 0x5EED)
        self.zones = [f"az{index + 1}" for index in range(spec.zones)]
        self.plan = plan_trial(spec.seed, self.zones)
        self.weather = Weather(random.Random(spec.seed ^ 0xB0B), spec.speed)
        self.history = TrialHistory()
        self.operations: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.anomalies: list[str] = []
        self.checked: Counter[str] = Counter()
        self.uploads: dict[str, list[Upload]] = {zone: [] for zone in self.zones}
        self.emulators: dict[str, PinotEmulator] = {}
        self.slots: list[Slot] = []
        self._origin = time.monotonic()
        self._wall_start = datetime.now(UTC)
        self._background: set[asyncio.Task[Any]] = set()
        self._incarnations: list[tuple[asyncio.Task[None], ChaosPinot]] = []
        self._finished: set[str] = set()
        self._weather_generation = 0
        self.trace: list[str] = []
        self._seen: dict[str, str] = {}
        """What happened, one line per event, for the report of a violating trial."""

    # ------------------------------------------------------------------------------ time

    def now(self) -> float:
        """Simulated seconds since the trial started."""
        return (time.monotonic() - self._origin) * self.spec.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0) / self.spec.speed)

    def note(self, event: str) -> None:
        self.trace.append(f"t={self.now():6.2f} {event}")

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A background task of the trial, cancelled and awaited by :meth:`_stop_background`."""
        task = asyncio.create_task(work, name=f"chaos {self.spec.seed} {name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------------------------ run

    async def run(self) -> TrialResult:
        started = time.monotonic()
        try:
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(self._stop_emulators)
                stack.push_async_callback(self._stop_agents)
                stack.push_async_callback(self._stop_background)
                try:
                    async with asyncio.timeout(TRIAL_TIMEOUT):
                        await self._setup()
                        await self._play()
                        await self._quiesce()
                except TimeoutError:
                    self.anomalies.append(f"trial cut short after {TRIAL_TIMEOUT:.0f}s")
            async with asyncio.timeout(TRIAL_TIMEOUT):
                bucket = await read_bucket(self.store, self.zones)
        finally:
            self._count_weather()
        violations = check(bucket, self.history, self.spec.seed)
        self.checked.update(coverage(bucket, self.history))
        return TrialResult(
            spec=self.spec,
            violations=violations,
            operations=self.operations,
            faults=self.faults,
            anomalies=[f"seed {self.spec.seed}: {a}" for a in self.anomalies],
            entries=self.checked["entries"],
            checked=self.checked,
            seconds=time.monotonic() - started,
            trace=self.trace,
        )

    async def _setup(self) -> None:
        options = EmulatorOptions(seed=self.spec.seed % 100_000, segment_size=2048)
        for index, zone in enumerate(self.zones):
            seeds = [SeedTable(TABLE, "REALTIME", 2)] if index == 0 else []
            emulator = PinotEmulator(
                self.workdir / f"pinot-{zone}", options=options, seed_tables=seeds
            )
            await emulator.start()
            self.emulators[zone] = emulator
            role = "active" if index == 0 else "standby"
            config = agent_config(zone, role, emulator.url, self.workdir)
            for replica in REPLICAS[: self.spec.replicas]:
                self.slots.append(Slot(f"{zone}-{replica}", zone, config))
        for slot in self.slots:
            self._start(slot)
        for zone in self.zones:
            self.spawn(self._produce(zone), f"produce {zone}")
        self.spawn(self._watch(), "sampler")

    async def _play(self) -> None:
        for step in self.plan:
            await self.sleep(step.after)
            tasks = [self.spawn(self._op(op), op.describe()) for op in step.ops]
            if step.settle:
                await asyncio.wait(tasks)
                await self._settle(SETTLE_WITHIN)

    async def _quiesce(self) -> None:
        self.weather.clear()
        for slot in self.slots:
            if slot.gate is not None and slot.gate.signal is Signal.STOPPED:
                slot.gate.cont()
            elif not slot.alive:
                self.note(f"restart {slot.name} (quiescence)")
                self._start(slot)
        if not await self._settle(QUIESCE_WITHIN):
            busy = [s.name for s in self.slots if self._busy(s)]
            self.anomalies.append(f"operations still running after quiescence: {busy}")
        await self.sleep(AFTERMATH)

    def _busy(self, slot: Slot) -> bool:
        op = slot.agent.operation if slot.running and slot.agent is not None else None
        return op is not None and op.status == "running"

    async def _settle(self, within: float) -> bool:
        """Wait until no running agent has an operation in progress; False at the deadline."""
        deadline = self.now() + within
        while any(self._busy(slot) for slot in self.slots):
            if self.now() > deadline:
                return False
            await self.sleep(SAMPLE_EVERY)
        return True

    # ------------------------------------------------------------------------------ agents

    def _start(self, slot: Slot) -> None:
        clock = TrialClock(self.spec.speed, self._origin, self._wall_start)
        pinot = launch(slot, self.store, self.weather, clock, self.uploads[slot.zone])
        assert slot.task is not None
        self._incarnations.append((slot.task, pinot))

    async def _end(self, slot: Slot, *, kill: bool) -> None:
        """SIGKILL (``kill``: nothing more reaches the bucket) or a clean stop (SIGTERM)."""
        task, gate, pinot = slot.task, slot.gate, slot.pinot
        if task is None or gate is None or slot.ending:
            return
        slot.ending = True
        if kill:
            gate.kill()
        elif gate.signal is Signal.STOPPED:
            gate.cont()
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_WITHIN)
        if not task.done():
            stuck = [t for t in slot.owned if not t.done()]
            self.anomalies.append(
                f"agent {gate.name} did not stop within {STOP_WITHIN:.0f}s of its cancellation "
                f"(SIGTERM); its tasks still running: "
                + ", ".join(sorted(waits_on(t) for t in stuck))
            )
            self.note(f"{gate.name} ignores its cancellation")
            for parked in stuck:  # every one at once, the innermost included: they end
                parked.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=STOP_WITHIN)
        if pinot is not None:
            await pinot.close()

    async def _stop_agents(self) -> None:
        """Stop every agent cleanly, then reap every incarnation there ever was (an ``_end``
        interrupted by the end of the trial included)."""
        await asyncio.gather(*(self._end(slot, kill=False) for slot in self.slots))
        for task, pinot in self._incarnations:
            task.cancel()  # the run's reaper deals with one that still ignores it
            await pinot.close()

    async def _stop_emulators(self) -> None:
        for emulator in self.emulators.values():
            async with asyncio.timeout(STOP_WITHIN):
                await emulator.stop()

    async def _stop_background(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                self.anomalies.append(f"engine task {task.get_name()} failed: {result!r}")

    def _check_exits(self) -> None:
        for slot in self.slots:
            task = slot.task
            if task is not None and task.done() and not slot.ending:
                slot.ending = True  # reported once
                error = None if task.cancelled() else task.exception()
                self.anomalies.append(f"agent {slot.name} exited by itself: {error!r}")
                self.note(f"{slot.name} exited by itself ({error!r}); restarted as a pod would be")
                self.spawn(
                    self._restart_crashed(slot, slot.gate, slot.pinot), f"restart {slot.name}"
                )

    # ------------------------------------------------------------------------------ ops

    def _resolve(self, op: Op) -> Slot | None:
        slots = [s for s in self.slots if s.zone == op.zone and s.alive]
        if op.kind == "stop":
            slots = [s for s in slots if s.running]
        if op.who in REPLICAS:
            slots = [s for s in slots if s.name.endswith(f"-{op.who}")]
        elif op.who == "leader":
            leaders = [s for s in slots if s.agent is not None and s.agent.keeper.is_leader]
            slots = leaders or slots
        return self.rng.choice(slots) if slots else None

    async def _op(self, op: Op) -> None:
        if op.kind == "brownout":
            self._brownout(op)
            return
        slot = self._resolve(op)
        if slot is None:
            self.note(f"{op.describe()}: no agent to receive it")
            self.operations[f"{op.kind} no-target"] += 1
            return
        if op.kind in ("kill", "stop"):
            self.note(f"{op.describe()} -> {slot.gate.name if slot.gate else slot.name}")
            await self._signal(slot, op)
            return
        self.note(f"{op.describe()} -> {slot.name}")
        outcome = await self._request(slot, op)
        self.note(f"{op.describe()} -> {slot.name}: {outcome}")
        self.operations[f"{op.kind} {outcome}"] += 1

    async def _signal(self, slot: Slot, op: Op) -> None:
        self.faults[op.kind] += 1
        gate = slot.gate
        assert gate is not None
        if op.kind == "kill":
            await self._end(slot, kill=True)
        else:
            gate.stop()
        if op.back_after is not None:
            self.spawn(self._back(slot, gate, op.back_after), f"back {slot.name}")

    async def _restart_crashed(
        self, slot: Slot, gate: ProcessGate | None, pinot: ChaosPinot | None
    ) -> None:
        if pinot is not None:
            await pinot.close()
        await self.sleep(CRASH_RESTART)
        if slot.gate is gate and gate is not None and gate.signal is not Signal.KILLED:
            self.faults["crash restart"] += 1
            self._start(slot)

    async def _back(self, slot: Slot, gate: ProcessGate, after: float) -> None:
        await self.sleep(after)
        if slot.gate is not gate:
            return  # another incarnation meanwhile
        if gate.signal is Signal.STOPPED:
            gate.cont()
        elif gate.signal is Signal.KILLED:
            self.faults["restart"] += 1
            self.note(f"restart {slot.name}")
            self._start(slot)

    async def _request(self, slot: Slot, op: Op) -> str:
        agent, gate = slot.agent, slot.gate
        assert agent is not None
        assert gate is not None
        call: Awaitable[tuple[int, dict[str, Any]]]
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT / self.spec.speed):
                await gate.passage()  # a stopped process reads the request once continued
                if op.kind == "pause":
                    call = agent.pause(PauseRequest(force=op.force, wait_seconds=1))
                elif op.kind == "activate":
                    assert op.source is not None
                    call = agent.activate(ActivateRequest(zone=op.source, force=op.force))
                else:
                    call = agent.resume()
                status, _ = await call
        except TimeoutError:
            return "timeout"
        except (AgentError, IllegalTransition, DriverError, StateError) as exc:
            return type(exc).__name__
        except Exception as exc:
            self.anomalies.append(f"{op.describe()} on {slot.name} raised {exc!r}")
            return "crash"
        return str(status)

    def _brownout(self, op: Op) -> None:
        weather = op.weather
        assert weather is not None
        self.note(op.describe())
        self.weather.brownout(weather.fail, weather.lost, weather.delay)
        self._weather_generation += 1
        self.spawn(self._clear_weather(self._weather_generation, weather.duration), "weather")

    async def _clear_weather(self, generation: int, after: float) -> None:
        await self.sleep(after)
        if generation == self._weather_generation:
            self.note("brownout over")
            self.weather.clear()

    def _count_weather(self) -> None:
        counts = self.weather.counts
        self.faults["brownout"] += counts.brownouts
        self.faults["injected 503"] += counts.failed
        self.faults["lost answer"] += counts.lost_answers
        self.faults["delayed request"] += counts.delayed

    # ------------------------------------------------------------------------------ world

    async def _produce(self, zone: str) -> None:
        """The zone's Pinot keeps committing segments of every consuming realtime table."""
        cluster = self.emulators[zone].cluster
        while True:
            await self.sleep(PRODUCE_EVERY * self.rng.uniform(0.5, 1.5))
            for name in [n for n in cluster.state.tables if n.endswith("_REALTIME")]:
                await cluster.produce_segment(name)

    def _pinot_segments(self, zone: str) -> dict[SegmentKey, str]:
        """Every segment with a CRC in the zone's Pinot, read behind the API."""
        found = {}
        for table in self.emulators[zone].cluster.state.tables.values():
            for name, record in table.segments.items():
                crc = record.zk.get("segment.crc")
                if crc is not None and crc.lstrip("-").isdigit() and int(crc) >= 0:
                    found[(table.name, name)] = str(int(crc))
        return found

    # ------------------------------------------------------------------------------ sampling

    async def _watch(self) -> None:
        next_primary = 0.0
        while True:
            await self.sleep(SAMPLE_EVERY)
            self._check_exits()
            now = self.now()
            for slot in self.slots:
                self._track(slot, now)
                self._note_change(slot)
            try:
                await self._sample_leaders(now)
                if now >= next_primary:
                    await self._sample_primary(now)
                    next_primary = now + PRIMARY_EVERY
            except (DriverError, StateError, ValueError, KeyError) as exc:
                self.note(f"sampling the bucket failed: {exc!r}")

    def _note_change(self, slot: Slot) -> None:
        agent = slot.agent
        if agent is None or not slot.alive:
            return
        seen = (
            f"{agent.state.value}{' leader' if agent.keeper.is_leader else ''} "
            f"epoch {agent.keeper.epoch} term {term_of(agent)}"
        )
        name = slot.gate.name if slot.gate else slot.name
        if self._seen.get(name) != seen:
            self._seen[name] = seen
            self.note(f"{name}: {seen}")

    def _track(self, slot: Slot, now: float) -> None:
        agent = slot.agent
        op = agent.operation if agent is not None and slot.alive else None
        if op is None or op.kind != "activate" or op.status != "succeeded":
            return
        if op.id in self._finished:
            return
        self._finished.add(op.id)
        self.operations["activation succeeded"] += 1
        self.note(f"{slot.name}: activation {op.id} from {op.source_zone} succeeded")
        self.history.activations.append(
            ActivationRecord(
                operation=op.id,
                agent=slot.name,
                target=slot.zone,
                source=str(op.source_zone),
                epoch=op.epoch,
                finished_at=now,
                pinot=self._pinot_segments(slot.zone),
                uploads={
                    (u.table, u.segment) for u in self.uploads[slot.zone] if u.operation == op.id
                },
            )
        )

    async def _sample_leaders(self, now: float) -> None:
        leading = [
            s
            for s in self.slots
            if s.running
            and s.agent is not None
            and s.agent.state is AgentState.ACTIVE
            and s.agent.keeper.is_leader
        ]
        if len({s.zone for s in leading}) < 2:
            return
        samples = [
            LeaderSample(now, s.zone, s.name, s.agent.keeper.epoch, term_of(s.agent))
            for s in leading
            if s.agent is not None
        ]
        holders = [s.agent.holder for s in leading if s.agent is not None]
        confirmed = [
            sample
            for sample, holder in zip(samples, holders, strict=True)
            if await self._holds_lease(sample.zone, holder)
        ]
        if len({s.zone for s in confirmed}) > 1:
            self.history.leaders.append(tuple(confirmed))

    async def _holds_lease(self, zone: str, holder: str) -> bool:
        try:
            data, _ = await self.store.get(lease_key(zone))
        except NotFound:
            return False
        record = LeaseRecord.decode(data, lease_key(zone))
        return record.holder == holder and record.state is LeaseState.ACTIVE

    async def _sample_primary(self, now: float) -> None:
        try:
            data, _ = await self.store.get(PRIMARY_KEY.format(group="default"))
        except NotFound:
            return
        record = json.loads(data)
        self.history.primaries.append(PrimarySample(now, str(record["zone"]), int(record["term"])))
