"""Automatic failover: the standby activates by itself once the source zone is gone or sick.

Each cycle (one lease round) looks at the source zone's lease, its published health
(``<source>/health.json``), the group's primary record and this zone's own health, decides, and
logs one sentence saying what it saw and what it decided, as Patroni's HA loop does.

It activates when the source's lease has not changed for its TTL plus ``graceSeconds`` (the
agent is gone; judged on this agent's clock, as lease expiry always is), or when the source has
published ``unhealthy`` for ``unhealthySeconds`` while its agent lives (the zone is sick: its
lease is live, so that activation is forced, and the primary record's CAS makes the source's
agent fenced within one lease round). It never does so

* while the source is paused: a planned handshake is the operator's;
* while this zone is unhealthy itself (a cold standby's workloads are scaled to zero by design:
  only the checks that do not depend on them count);
* back to a zone that took the primary from this one automatically (no automatic failback:
  the record names its previous zone and why it was claimed);
* more than once per ``cooldownMinutes`` (the journal's last automatic activation, so a
  restart does not reset it);
* when the group's primary is not the source (someone else already moved it).

The activation itself is the operator's path: :func:`start_activation` through the same
primary-record CAS, so an automatic failover can never race an operator into two primaries.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from az_agent.agent.backoff import backoff_delay
from az_agent.agent.config import AutomaticFailoverSettings
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.errors import DriverError
from az_agent.state import (
    Clock,
    HealthBoard,
    HealthStatus,
    LeaseKeeper,
    LeaseObservation,
    LeaseState,
    PrimaryRecord,
    StateError,
    ZoneHealth,
)

log = logging.getLogger(__name__)

LEASE_EXPIRED = "lease-expired"
UNHEALTHY = "unhealthy"
WORKLOAD_CHECKS = frozenset({"pinot-controller", "pinot-brokers", "pinot-servers", "postgres"})
"""Checks of workloads a cold standby keeps scaled to zero: not held against its own zone."""
INGESTION_CHECK = "ingestion"
REFUSED_RETRY_MAX_SECONDS = 60.0
"""A refused automatic activation (nothing backed up, a storage error) is retried with backoff
up to this, not every cycle."""


def source_is_gone(observation: LeaseObservation, grace_seconds: float) -> bool:
    """True when the source's lease is live-looking (not paused) but silent past TTL + grace."""
    record = observation.record
    if record is None or record.state is LeaseState.PAUSED:
        return False
    return observation.seconds_unchanged >= record.ttl_seconds + grace_seconds


class UnhealthyStreak:
    """How long a zone has published ``unhealthy``, on this agent's monotonic clock.

    The streak starts at the first fresh unhealthy record seen here and ends at any healthy or
    unknown one. A record whose sequence has not moved for ``stale_after`` seconds says nothing
    (its agent is stuck or gone: the lease rule judges that), so the streak is not counted then.
    """

    def __init__(self, stale_after: float) -> None:
        self._stale_after = stale_after
        self._sequence: int | None = None
        self._changed_at = 0.0
        self._since: float | None = None

    def observe(self, health: ZoneHealth | None, now: float) -> float | None:
        """Seconds the zone has been unhealthy as of ``now``; None when not (or stale)."""
        if health is None:
            self._sequence, self._since = None, None
            return None
        if health.sequence != self._sequence:
            self._sequence, self._changed_at = health.sequence, now
            if health.status is HealthStatus.UNHEALTHY:
                self._since = now if self._since is None else self._since
            else:
                self._since = None
        if self._since is None or self.is_stale(now):
            return None
        return now - self._since

    def is_stale(self, now: float) -> bool:
        """The last record seen has not changed for longer than ``stale_after``."""
        return self._sequence is not None and now - self._changed_at > self._stale_after


@dataclass(frozen=True, slots=True)
class Sight:
    """What one decision cycle saw."""

    zone: str
    source: str
    lease: LeaseObservation | None
    lease_error: str | None
    source_health: ZoneHealth | None
    unhealthy_for: float | None
    health_stale: bool
    """The source's health record has stopped changing (its agent is stuck or gone)."""
    own_health: ZoneHealth | None
    cold: bool
    """This zone is a cold standby: its workloads' checks do not count against it."""
    primary: PrimaryRecord | None
    cooldown_left: float


@dataclass(frozen=True, slots=True)
class Decision:
    reason: str | None
    """``lease-expired`` or ``unhealthy`` to activate; None to wait."""
    sentence: str


def own_failing(health: ZoneHealth | None, *, cold: bool) -> list[str]:
    """The checks that make this zone unfit to take over (none when it has not probed yet)."""
    if health is None:
        return []
    ignored = WORKLOAD_CHECKS | {INGESTION_CHECK} if cold else frozenset({INGESTION_CHECK})
    return [name for name in health.failing if name not in ignored]


def decide(sight: Sight, settings: AutomaticFailoverSettings) -> Decision:
    """The rule of the module docstring, as one function of what was seen."""
    source, zone = sight.source, sight.zone

    def wait(why: str) -> Decision:
        return Decision(None, f"zone {zone} stays standby: {why}")

    if sight.lease is None:
        return wait(f"cannot read zone {source}'s lease ({sight.lease_error})")
    primary = sight.primary
    if primary is not None and primary.zone != source:
        return wait(
            f"zone {primary.zone} is the group's primary (term {primary.term}), not {source}"
        )
    record = sight.lease.record
    if record is None:
        return wait(f"zone {source} has no lease in the bucket")
    if record.state is LeaseState.PAUSED:
        return wait(f"zone {source} is paused (a planned handshake is the operator's)")
    if primary is not None and primary.automatic and primary.previous_zone == zone:
        return wait(
            f"zone {source} took the primary from this zone automatically (term "
            f"{primary.term}, {primary.automatic}); failing back is an operator's call"
        )
    gone = source_is_gone(sight.lease, settings.grace_seconds)
    unhealthy = (
        sight.unhealthy_for is not None and sight.unhealthy_for >= settings.unhealthy_seconds
    )
    seen = _seen(sight)
    if not (gone or unhealthy):
        return wait(seen)
    failing = own_failing(sight.own_health, cold=sight.cold)
    if failing:
        return wait(f"{seen}, but this zone is unhealthy itself ({', '.join(failing)})")
    if sight.cooldown_left > 0:
        return wait(
            f"{seen}, but the last automatic activation is within the cooldown "
            f"({sight.cooldown_left / 60:.1f} min left)"
        )
    reason = LEASE_EXPIRED if gone else UNHEALTHY
    return Decision(reason, f"zone {zone} activates from zone {source}: {seen}")


def _seen(sight: Sight) -> str:
    """One clause: the source's lease and health as seen here."""
    lease = sight.lease
    assert lease is not None
    assert lease.record is not None
    parts = [
        f"zone {sight.source}'s lease (holder {lease.record.holder}) unchanged for "
        f"{lease.seconds_unchanged:.0f}s of {lease.record.ttl_seconds:.0f}s TTL"
    ]
    health = sight.source_health
    if health is None:
        parts.append("no published health")
    elif sight.unhealthy_for is not None:
        parts.append(
            f"unhealthy for {sight.unhealthy_for:.0f}s ({', '.join(health.failing) or '?'})"
        )
    else:
        stale = ", stale" if sight.health_stale else ""
        parts.append(f"health {health.status.value} (sequence {health.sequence}{stale})")
    return ", ".join(parts)


@dataclass
class AutomaticFailoverDeps:
    """What the watcher reads and calls; the daemon provides them."""

    zone: str
    settings: AutomaticFailoverSettings
    keeper: LeaseKeeper
    """Observes the source zone's lease (kept across cycles: expiry is judged over time)."""
    health: HealthBoard
    clock: Clock
    metrics: AgentMetrics
    period: float
    cold: bool
    is_standby: Callable[[], bool]
    primary: Callable[[], PrimaryRecord | None]
    own_health: Callable[[], ZoneHealth | None]
    last_automatic: Callable[[], Awaitable[datetime | None]]
    """When this zone last activated automatically (from its journal), once at start."""
    activate: Callable[[str, str, bool], Awaitable[bool]]
    """``activate(source, reason, force)``: True when the activation was admitted."""


class AutomaticFailover:
    """The decision loop; one per agent with ``automaticFailover.enabled``."""

    def __init__(self, deps: AutomaticFailoverDeps) -> None:
        self.deps = deps
        ttl = deps.keeper.settings.ttl_seconds
        self.streak = UnhealthyStreak(stale_after=ttl + deps.settings.grace_seconds)
        self.last_decision: Decision | None = None
        self._last_activation: datetime | None = None
        self._refusals = 0
        self._retry_at = 0.0
        """After a refused activation, the next attempt waits (monotonic) until then."""

    async def run(self) -> None:
        deps = self.deps
        self._last_activation = await deps.last_automatic()
        while True:
            await deps.clock.sleep(deps.period)
            if not deps.is_standby():
                continue
            sight = await self.look()
            decision = self.last_decision = decide(sight, deps.settings)
            if decision.reason is None:
                log.info("automatic failover: %s", decision.sentence)
                continue
            reason, wait = decision.reason, self._retry_at - deps.clock.monotonic()
            if wait > 0:
                decision = self.last_decision = Decision(
                    None,
                    f"{decision.sentence}; its last attempt was refused, the next in {wait:.0f}s",
                )
                log.info("automatic failover: %s", decision.sentence)
                continue
            log.warning("automatic failover: %s", decision.sentence)
            force = reason == UNHEALTHY  # the sick zone's agent still holds its lease
            if await deps.activate(deps.settings.source_zone, reason, force):
                self._last_activation = deps.clock.now()
                self._refusals = 0
                deps.metrics.automatic_activations.labels(reason=reason).inc()
            else:
                self._refusals += 1
                delay = backoff_delay(self._refusals, deps.period, REFUSED_RETRY_MAX_SECONDS)
                self._retry_at = deps.clock.monotonic() + delay

    async def look(self) -> Sight:
        deps, source = self.deps, self.deps.settings.source_zone
        lease: LeaseObservation | None = None
        lease_error: str | None = None
        try:
            lease = await deps.keeper.observe()
        except (DriverError, StateError) as exc:
            lease_error = f"{type(exc).__name__}: {exc}"
        try:
            source_health = await deps.health.read(source)
        except (DriverError, StateError) as exc:
            log.debug("cannot read zone %s's health: %s", source, exc)
            source_health = None
        now = deps.clock.monotonic()
        unhealthy_for = self.streak.observe(source_health, now)
        return Sight(
            zone=deps.zone,
            source=source,
            lease=lease,
            lease_error=lease_error,
            source_health=source_health,
            unhealthy_for=unhealthy_for,
            health_stale=self.streak.is_stale(now),
            own_health=deps.own_health(),
            cold=deps.cold,
            primary=deps.primary(),
            cooldown_left=self._cooldown_left(),
        )

    def _cooldown_left(self) -> float:
        if self._last_activation is None:
            return 0.0
        elapsed = (self.deps.clock.now() - self._last_activation).total_seconds()
        return max(0.0, self.deps.settings.cooldown_minutes * 60 - elapsed)
