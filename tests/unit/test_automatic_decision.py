"""The automatic failover's rule, one clause at a time, on what a cycle saw."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from az_agent.agent.config import AutomaticFailoverSettings
from az_agent.agent.leadership.automatic import (
    LEASE_EXPIRED,
    UNHEALTHY,
    Sight,
    UnhealthyStreak,
    decide,
)
from az_agent.state import (
    HealthCheck,
    HealthStatus,
    LeaseObservation,
    LeaseRecord,
    LeaseState,
    PrimaryRecord,
    ZoneHealth,
)

NOW = datetime(2026, 12, 4, tzinfo=UTC)
SETTINGS = AutomaticFailoverSettings(
    enabled=True, source_zone="az1", grace_seconds=10, unhealthy_seconds=60, cooldown_minutes=30
)


def lease(unchanged: float, state: LeaseState = LeaseState.ACTIVE) -> LeaseObservation:
    record = LeaseRecord(
        holder="az1-agent-1",
        zone="az1",
        epoch=3,
        ttl_seconds=15,
        renew_deadline_seconds=10,
        state=state,
        acquired_at=NOW,
        renewed_at=NOW,
        nonce="n",
    )
    return LeaseObservation(record, "v1", unchanged)


def health(status: HealthStatus, sequence: int = 1, **checks: bool) -> ZoneHealth:
    return ZoneHealth(
        zone="az2",
        status=status,
        sequence=sequence,
        measured_at=NOW,
        holder="h",
        checks={name.replace("_", "-"): HealthCheck(ok=ok) for name, ok in checks.items()},
    )


def primary(zone: str = "az1", **fields: object) -> PrimaryRecord:
    return PrimaryRecord(zone=zone, term=2, since=NOW, nonce="n", **fields)  # type: ignore[arg-type]


def sight(**changes: object) -> Sight:
    base = Sight(
        zone="az2",
        source="az1",
        lease=lease(1),
        lease_error=None,
        source_health=health(HealthStatus.HEALTHY),
        unhealthy_for=None,
        health_stale=False,
        own_health=health(HealthStatus.HEALTHY),
        cold=False,
        primary=primary(),
        cooldown_left=0.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_live_healthy_source_is_left_alone() -> None:
    decision = decide(sight(), SETTINGS)
    assert decision.reason is None
    assert "az1's lease (holder az1-agent-1) unchanged for 1s of 15s TTL" in decision.sentence
    assert "health healthy" in decision.sentence


def test_a_lease_silent_past_ttl_and_grace_activates() -> None:
    assert decide(sight(lease=lease(24.9)), SETTINGS).reason is None
    decision = decide(sight(lease=lease(25)), SETTINGS)
    assert decision.reason == LEASE_EXPIRED
    assert decision.sentence.startswith("zone az2 activates from zone az1")


def test_unhealthy_for_long_enough_activates() -> None:
    assert decide(sight(unhealthy_for=59.0), SETTINGS).reason is None
    assert decide(sight(unhealthy_for=60.0), SETTINGS).reason == UNHEALTHY


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"lease": lease(999, LeaseState.PAUSED)}, "is paused"),
        ({"lease": None, "lease_error": "Unavailable: 503"}, "cannot read zone az1's lease"),
        ({"primary": primary("az3")}, "zone az3 is the group's primary"),
        ({"primary": primary("az2")}, "zone az2 is the group's primary"),
        (
            {"primary": primary(previous_zone="az2", automatic="unhealthy")},
            "failing back is an operator's call",
        ),
        (
            {"own_health": health(HealthStatus.UNHEALTHY, pinot_controller=False)},
            "this zone is unhealthy itself (pinot-controller)",
        ),
        ({"cooldown_left": 90.0}, "cooldown (1.5 min left)"),
    ],
)
def test_never(changes: dict[str, object], why: str) -> None:
    for trigger in ({"lease": lease(1000)}, {"unhealthy_for": 1000.0}):
        decision = decide(sight(**{**trigger, **changes}), SETTINGS)
        assert decision.reason is None, decision.sentence
        assert why in decision.sentence
        assert decision.sentence.startswith("zone az2 stays standby: ")


def test_an_operator_made_primary_may_be_taken_back_automatically() -> None:
    made_by_hand = primary(previous_zone="az2", automatic=None)
    assert decide(sight(lease=lease(100), primary=made_by_hand), SETTINGS).reason == LEASE_EXPIRED


def test_a_cold_standby_does_not_hold_its_scaled_down_workloads_against_itself() -> None:
    own = health(HealthStatus.UNHEALTHY, pinot_controller=False, postgres=False, bucket=True)
    assert decide(sight(lease=lease(100), own_health=own, cold=True), SETTINGS).reason is not None
    own = health(HealthStatus.UNHEALTHY, pinot_controller=True, kubernetes=False)
    assert decide(sight(lease=lease(100), own_health=own, cold=True), SETTINGS).reason is None


def test_the_streak_counts_fresh_unhealthy_records_on_the_observers_clock() -> None:
    streak = UnhealthyStreak(stale_after=20)
    assert streak.observe(health(HealthStatus.HEALTHY, 1), 0) is None
    assert streak.observe(health(HealthStatus.UNHEALTHY, 2), 2) == 0
    assert streak.observe(health(HealthStatus.UNHEALTHY, 3), 4) == 2
    assert streak.observe(health(HealthStatus.UNHEALTHY, 3), 20) == 18  # same record, still fresh
    assert streak.observe(health(HealthStatus.UNHEALTHY, 3), 25) is None  # stale: lease rule's
    assert streak.observe(health(HealthStatus.UNHEALTHY, 4), 26) == 24  # fresh again, same streak
    assert streak.observe(health(HealthStatus.HEALTHY, 5), 28) is None
    assert streak.observe(health(HealthStatus.UNHEALTHY, 6), 30) == 0  # a new streak
    assert streak.observe(None, 31) is None
    assert streak.observe(health(HealthStatus.UNHEALTHY, 7), 32) == 0
