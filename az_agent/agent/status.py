"""``/status`` and ``/readyz``: the human view of what the metrics count.

Scripts depend on these names: ``zone``, ``state``, ``leader``, ``leading``, ``epoch``,
``rpoSeconds`` (``segments``, ``postgres``) and ``operation`` (``id``, ``kind``, ``phase``,
``status``, ``progress``, ``error``; null when none has run), ``dependencies`` (each one's
last probe: ``"ok"`` or its error) and ``failure`` (why the agent is ``FAILED`` outside any
operation: a split brain or a corrupt log; null otherwise), ``health`` (``zone``: this zone
as this agent last measured it, ``peer``: the peer zone's published ``health.json``; see
``standby/health.py``).

``leader`` says the zone's lease is held; ``leading`` that its leader session runs (the fence
entry written and the catalog loaded; the backup loops run under it), which comes a moment later:
only then is anything being backed up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from az_agent.drivers.errors import DriverError
from az_agent.state import HealthCheck

if TYPE_CHECKING:
    from az_agent.agent.daemon import Agent


def build_status(agent: Agent) -> dict[str, Any]:
    deps = agent.deps
    lease = agent.keeper.status()
    database = deps.database_backup
    backing_up = agent.session is not None
    now = deps.clock.now()
    return {
        "zone": agent.zone,
        "state": agent.state.value,
        "allowedRequests": agent.allowed(),
        "leader": lease.is_leader,
        "leading": agent.session is not None,
        "epoch": lease.epoch or 0,
        "holder": agent.holder,
        "lease": {
            "holder": lease.record_holder,
            "epoch": lease.record_epoch,
            "state": lease.record_state.value if lease.record_state else None,
            "secondsSinceRenewal": _round(lease.seconds_since_renewal),
            "secondsUnchanged": _round(lease.seconds_unchanged),
            "acquiredAt": lease.acquired_at.isoformat() if lease.acquired_at else None,
        },
        "primary": _primary(agent),
        "fencedBy": agent.fenced_by,
        "automaticFailover": _automatic(agent),
        "rpoSeconds": {
            # As the metrics: only the zone that backs up has a recovery point (null otherwise).
            "segments": round(deps.segment_backup.rpo_seconds(), 3) if backing_up else None,
            "postgres": round(database.rpo_seconds(), 3) if database and backing_up else None,
        },
        "backups": {
            "segments": deps.segment_backup.status(),
            "postgres": database.status() if database else {"enabled": False},
        },
        "alerts": {"silencing": deps.silences.enabled},
        "standby": _standby(agent),
        "health": agent.health.describe(),
        "dependencies": agent.dependencies,
        "failure": agent.failure,
        "operation": agent.operation.describe(now) if agent.operation else None,
        "time": now.isoformat(),
    }


def _primary(agent: Agent) -> dict[str, Any] | None:
    """The failover group's primary zone and term, as this agent last read them."""
    observation = agent.leadership.primary
    record = observation.record if observation else None
    return {
        "group": agent.leadership.primary_lock.group,
        "zone": record.zone if record else None,
        "term": record.term if record else 0,
        "since": record.since.isoformat() if record else None,
        "isThisZone": record is not None and record.zone == agent.zone,
        "previousZone": record.previous_zone if record else None,
        "automatic": record.automatic if record else None,
    }


def _automatic(agent: Agent) -> dict[str, Any]:
    """The automatic failover's settings and its last decision (one sentence)."""
    settings = agent.deps.config.service.automatic_failover
    watcher = agent.automatic
    decision = watcher.last_decision if watcher else None
    return {
        "enabled": settings.enabled,
        "sourceZone": settings.source_zone or None,
        "lastDecision": decision.sentence if decision else None,
    }


def _standby(agent: Agent) -> dict[str, Any]:
    """The standby mode; a warm standby adds whom it follows and how far behind it is."""
    if agent.follower is None:
        return {"mode": agent.deps.config.service.standby.mode}
    return agent.follower.describe(agent.deps.clock.now())


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


DEPENDENCY_CHECK_SECONDS = 10.0
"""How often :func:`watch_dependencies` probes, so ``/status`` and the metrics stay current
without anyone calling ``/readyz``."""

ALERTMANAGER_PROBE = "az-agent readiness probe"


async def check_dependencies(agent: Agent, *, zone: bool = True) -> tuple[bool, dict[str, Any]]:
    """Probe every configured dependency concurrently; ready when all answer.

    ``zone=False`` leaves out Pinot and PostgreSQL, which the zone health watch probes every
    lease round already (:func:`note_zone_probe`), and updates only the others' answers.

    The body names each dependency that is down in ``down`` and gives every one's one-line
    answer in ``dependencies`` (``"ok"`` or the error). The result is also kept on the agent
    (``/status``) and exported as ``az_agent_dependency_up{dependency}``.
    """
    deps = agent.deps

    async def probe(name: str, check: Callable[[], Awaitable[Any]]) -> tuple[str, str | None]:
        try:
            await asyncio.wait_for(check(), timeout=5)
        except (DriverError, TimeoutError) as exc:
            return name, f"{type(exc).__name__}: {exc}"
        return name, None

    checks = [probe("bucket", deps.store.check)]
    if zone:
        checks.append(probe("pinot", deps.pinot.health))
    if zone and deps.dumper is not None:
        checks.append(probe("postgres", deps.dumper.ping))
    if deps.silences.enabled:
        silences = deps.silences
        checks.append(
            probe("alertmanager", lambda: silences.find(comment_contains=ALERTMANAGER_PROBE))
        )
    # One "kubernetes" answer for the service proxy and the cold standby's workloads alike.
    kubernetes: list[Callable[[], Awaitable[None]]] = [
        c.ping for c in (deps.service_proxy, deps.cold_standby) if c is not None
    ]
    if kubernetes:
        checks.append(probe("kubernetes", lambda: _each(kubernetes)))
    results = dict(await asyncio.gather(*checks))
    for name, error in results.items():
        deps.metrics.dependency_up.labels(dependency=name).set(0 if error else 1)
    answers = {name: error or "ok" for name, error in results.items()}
    agent.dependencies = answers if zone else {**agent.dependencies, **answers}
    down = sorted(name for name, error in results.items() if error is not None)
    return not down, {"ok": not down, "down": down, "dependencies": answers}


async def _each(checks: list[Callable[[], Awaitable[None]]]) -> None:
    for check in checks:
        await check()


async def watch_dependencies(agent: Agent, period: float = DEPENDENCY_CHECK_SECONDS) -> None:
    """Probe the dependencies every ``period`` seconds, until cancelled."""
    while True:
        await check_dependencies(agent, zone=False)
        await agent.deps.clock.sleep(period)


ZONE_DEPENDENCIES = {"pinot": "pinot-controller", "postgres": "postgres"}
"""Dependency names and the zone health checks that probe the same thing."""


def note_zone_probe(agent: Agent, checks: Mapping[str, HealthCheck]) -> None:
    """Take the zone health watch's probes of Pinot and PostgreSQL as dependency answers."""
    answers = dict(agent.dependencies)
    for dependency, name in ZONE_DEPENDENCIES.items():
        check = checks.get(name)
        if check is not None:
            answers[dependency] = "ok" if check.ok else check.detail
            up = agent.deps.metrics.dependency_up.labels(dependency=dependency)
            up.set(1 if check.ok else 0)
    agent.dependencies = answers
