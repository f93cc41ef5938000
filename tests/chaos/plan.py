"""What a trial does, drawn from its seed alone: steps of operator requests and faults.

A plan is a list of :class:`Step`: wait ``after`` simulated seconds, start every op of the step
at once (two ops in one step are concurrent, e.g. a cross-activation), and, when ``settle``,
wait until the operations they started are over before the next step. Ops name an agent by
zone and role (``leader``: whichever replica leads when the op runs, as a Service would route
to it most of the time; ``any``: a random replica; ``a``/``b``: that replica), so a plan is
pure data and replays from its seed whatever the timing.

Scenarios mix the handshakes the design promises to survive with the faults around them:
planned failover, unplanned failover (SIGKILL or SIGSTOP of the primary, with or without
``force``), concurrent cross-activations, ``/resume`` racing an ``/activate``, two replicas
activating at once, a stopped leader waking up as a zombie, and noise (kills and restarts,
stops and continues, bucket brownouts, stray resumes).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

OP_KINDS = ("pause", "activate", "resume", "kill", "stop", "brownout")
SCENARIO_GAP = (1.5, 3.5)
"""Simulated seconds between two scenarios of a trial."""


@dataclass(frozen=True, slots=True)
class Weather:
    """A brownout: ``fail`` and ``lost`` shares of requests, delays up to ``delay`` s."""

    fail: float
    lost: float
    delay: float
    duration: float


@dataclass(frozen=True, slots=True)
class Op:
    kind: str
    zone: str = ""
    who: str = "leader"
    source: str | None = None
    force: bool = False
    back_after: float | None = None
    """kill / stop: restart / continue the agent this many simulated seconds later (None: at
    the end of the trial)."""
    weather: Weather | None = None

    def describe(self) -> str:
        if self.kind == "brownout" and self.weather is not None:
            w = self.weather
            return (
                f"brownout fail={w.fail:.2f} lost={w.lost:.2f} delay={w.delay:.2f}s "
                f"for {w.duration:.1f}s"
            )
        text = f"{self.kind} {self.zone}[{self.who}]"
        if self.source is not None:
            text += f" from {self.source}"
        if self.force:
            text += " force"
        if self.back_after is not None:
            text += f" back after {self.back_after:.1f}s"
        return text


@dataclass(frozen=True, slots=True)
class Step:
    after: float
    ops: tuple[Op, ...]
    settle: bool = False
    scenario: str = ""


@dataclass
class _Model:
    """The planner's rough belief of who is primary (the truth is the bucket's)."""

    zones: Sequence[str]
    primary: str
    been_primary: set[str] = field(default_factory=set)

    def others(self, zone: str) -> list[str]:
        return [z for z in self.zones if z != zone]


def plan_trial(seed: int, zones: Sequence[str], steps: int | None = None) -> list[Step]:
    """The plan of the trial with ``seed`` over ``zones`` (the first one starts primary)."""
    rng = random.Random(seed)
    model = _Model(zones, zones[0], {zones[0]})
    count = steps if steps is not None else rng.randint(2, 4)
    plan: list[Step] = [Step(rng.uniform(1.0, 2.5), (), scenario="warm-up")]
    if rng.random() < 0.5:
        # A history first: a clean failover, so that both zones hold backups and the
        # scenarios that need a second zone with a log (cross-activations) can bite.
        target = rng.choice(model.others(model.primary))
        plan += [
            Step(0.0, (Op("pause", model.primary, "leader"),), settle=True, scenario="history"),
            Step(
                rng.uniform(0.0, 1.0),
                (Op("activate", target, "any", source=model.primary),),
                settle=True,
                scenario="history",
            ),
        ]
        model.primary = target
        model.been_primary.add(target)
    for _ in range(count):
        scenario = rng.choices(list(_SCENARIOS), weights=[w for w, _ in _SCENARIOS.values()])[0]
        steps_of = _SCENARIOS[scenario][1](rng, model)
        # A gap between scenarios: a zone that just became primary needs a moment to back
        # up what it restored, or every activation from it is refused (nothing to restore).
        gap = rng.uniform(*SCENARIO_GAP)
        plan += [
            Step(s.after + (gap if i == 0 else 0.0), s.ops, s.settle, scenario)
            for i, s in enumerate(steps_of)
        ]
    return plan


def _delay(rng: random.Random) -> float:
    """Time between two steps: often none (concurrent), else up to two seconds."""
    return 0.0 if rng.random() < 0.3 else rng.uniform(0.1, 2.0)


def _planned(rng: random.Random, model: _Model) -> list[Step]:
    source = model.primary
    target = rng.choice(model.others(source))
    pause = Op("pause", source, _who(rng), force=rng.random() < 0.3)
    activate = Op("activate", target, "any", source=source, force=rng.random() < 0.3)
    model.primary = target
    model.been_primary.add(target)
    if rng.random() < 0.2:  # operator does not wait for the pause
        return [Step(_delay(rng), (pause,)), Step(_delay(rng), (activate,), settle=True)]
    return [Step(_delay(rng), (pause,), settle=True), Step(_delay(rng), (activate,), settle=True)]


def _unplanned(rng: random.Random, model: _Model) -> list[Step]:
    source = model.primary
    target = rng.choice(model.others(source))
    signal = rng.choice(("kill", "stop"))
    back = None if rng.random() < 0.3 else rng.uniform(1.0, 6.0)
    down = [Op(signal, source, "leader", back_after=back)]
    if rng.random() < 0.4:
        down.append(Op(signal, source, "any", back_after=back))
    force = rng.random() < 0.7
    wait = 0.0 if force else rng.uniform(2.0, 5.0)  # unforced: may wait out the lease's TTL
    model.primary = target
    model.been_primary.add(target)
    return [
        Step(_delay(rng), tuple(down)),
        Step(wait, (Op("activate", target, "any", source=source, force=force),), settle=True),
    ]


def _cross(rng: random.Random, model: _Model) -> list[Step]:
    """Pause P; then at once activate Q from P and P from Q (Q has been primary before)."""
    candidates = [z for z in model.others(model.primary) if z in model.been_primary]
    if not candidates:
        return _planned(rng, model)
    first, second = model.primary, rng.choice(candidates)
    steps = []
    if rng.random() < 0.8:
        steps.append(Step(_delay(rng), (Op("pause", first, "leader"),), settle=True))
    force = rng.random() < 0.4
    both = (
        Op("activate", second, "any", source=first, force=force),
        Op("activate", first, "any", source=second, force=force),
    )
    steps.append(Step(_delay(rng), both, settle=True))
    model.primary = rng.choice((first, second))
    return steps


def _resume_race(rng: random.Random, model: _Model) -> list[Step]:
    """Pause P; then at once resume P in place and activate Q from P."""
    source = model.primary
    target = rng.choice(model.others(source))
    race = (
        Op("resume", source, "any"),
        Op("activate", target, "any", source=source, force=rng.random() < 0.3),
    )
    model.primary = rng.choice((source, target))
    model.been_primary.add(target)
    return [
        Step(_delay(rng), (Op("pause", source, "leader"),), settle=True),
        Step(_delay(rng), race, settle=True),
    ]


def _double(rng: random.Random, model: _Model) -> list[Step]:
    """Two activations from the same source at once: both replicas of one target zone, or
    (three zones) two target zones."""
    source = model.primary
    others = model.others(source)
    force = rng.random() < 0.3
    if len(others) > 1 and rng.random() < 0.6:
        targets = rng.sample(others, 2)
        both = tuple(Op("activate", t, "any", source=source, force=force) for t in targets)
    else:
        targets = [rng.choice(others)]
        both = tuple(
            Op("activate", targets[0], who, source=source, force=force) for who in ("a", "b")
        )
    model.primary = rng.choice(targets)
    model.been_primary.update(targets)
    return [
        Step(_delay(rng), (Op("pause", source, "leader"),), settle=True),
        Step(_delay(rng), both, settle=True),
    ]


def _zombie(rng: random.Random, model: _Model) -> list[Step]:
    """SIGSTOP the leader long enough for its lease to lapse, then SIGCONT it; sometimes the
    other zone takes over meanwhile."""
    source = model.primary
    stop = Op("stop", source, "leader", back_after=rng.uniform(3.5, 7.0))
    steps = [Step(_delay(rng), (stop,))]
    if rng.random() < 0.5:
        target = rng.choice(model.others(source))
        model.primary = target
        model.been_primary.add(target)
        activate = Op("activate", target, "any", source=source, force=rng.random() < 0.7)
        steps.append(Step(rng.uniform(0.0, 3.0), (activate,), settle=True))
    return steps


def _noise(rng: random.Random, model: _Model) -> list[Step]:
    zone = rng.choice(list(model.zones))
    kind = rng.choice(("kill", "stop", "brownout", "brownout", "resume"))
    if kind == "brownout":
        weather = Weather(
            fail=rng.uniform(0.05, 0.5),
            lost=rng.uniform(0.0, 0.1),
            delay=rng.choice((0.0, rng.uniform(0.05, 0.6))),
            duration=rng.uniform(1.0, 4.0),
        )
        return [Step(_delay(rng), (Op("brownout", weather=weather),))]
    if kind == "resume":
        return [Step(_delay(rng), (Op("resume", zone, "any"),))]
    return [Step(_delay(rng), (Op(kind, zone, _who(rng), back_after=rng.uniform(0.5, 4.0)),))]


def _who(rng: random.Random) -> str:
    return "leader" if rng.random() < 0.75 else "any"


_SCENARIOS = {
    "planned": (2.0, _planned),
    "unplanned": (2.0, _unplanned),
    "cross": (3.0, _cross),
    "resume-race": (1.5, _resume_race),
    "double": (1.5, _double),
    "zombie": (1.5, _zombie),
    "noise": (2.5, _noise),
}
