"""The agent's metrics registry: series that exist only when they mean something, and no
``_created`` series."""

from __future__ import annotations

from az_agent.agent.observability.metrics import AgentMetrics


def value(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_no_created_series_even_for_counters_that_counted() -> None:
    metrics = AgentMetrics("az1")
    metrics.segments_backed_up.inc()
    metrics.backup_failures.labels(kind="segments", reason="unavailable").inc()
    text = metrics.render().decode()
    assert "az_agent_segments_backed_up_total 1.0" in text
    assert "_created" not in text


def test_durations_are_absent_until_the_operation_first_ran() -> None:
    metrics = AgentMetrics("az1")
    for name in ("az_agent_activation_duration_seconds", "az_agent_pause_duration_seconds"):
        assert value(metrics, name) is None
        assert f"\n{name} " not in metrics.render().decode()
    metrics.pause_duration.set(2.5)
    metrics.activation_duration.set(0.0)  # a real 0 is shown
    assert value(metrics, "az_agent_pause_duration_seconds") == 2.5
    assert value(metrics, "az_agent_activation_duration_seconds") == 0.0


def test_phase_durations_per_operation_kind() -> None:
    metrics = AgentMetrics("az1")
    metrics.set_phase_duration("pause", "flush-segments", 1.5)
    metrics.set_phase_duration("activate", "rehydrate-segments", 7.0)
    metrics.set_phase_duration("resume", "resume-consumption", 3.0)  # not exported
    pause = "az_agent_pause_phase_duration_seconds"
    activation = "az_agent_activation_phase_duration_seconds"
    assert value(metrics, pause, phase="flush-segments") == 1.5
    assert value(metrics, activation, phase="rehydrate-segments") == 7.0
    assert value(metrics, activation, phase="flush-segments") is None
    assert "resume-consumption" not in metrics.render().decode()


def test_rehydration_done_never_exceeds_total() -> None:
    metrics = AgentMetrics("az1")
    metrics.set_rehydration(12, 10, 5_000, 4_000)
    assert value(metrics, "az_agent_rehydration_segments", of="done") == 10
    assert value(metrics, "az_agent_rehydration_segments", of="total") == 10
    assert value(metrics, "az_agent_rehydration_bytes", of="done") == 4_000
    metrics.set_rehydration(3, 10, 1_000, 4_000)
    assert value(metrics, "az_agent_rehydration_segments", of="done") == 3


def test_recovery_points_only_for_the_kinds_being_backed_up() -> None:
    metrics = AgentMetrics("az1")
    points: dict[str, float | None] = {"segments": None, "postgres": None}
    ages: dict[str, float] | None = None
    metrics.recovery.track("segments", lambda: points["segments"])
    metrics.recovery.track("postgres", lambda: points["postgres"])
    metrics.recovery.track_dumps(lambda: ages)
    assert "az_agent_rpo_seconds{" not in metrics.render().decode()
    assert "az_agent_postgres_dump_age_seconds{" not in metrics.render().decode()

    points["segments"], points["postgres"], ages = 0.0, 42.0, {"configdb": 42.0}
    assert value(metrics, "az_agent_rpo_seconds", kind="segments") == 0.0
    assert value(metrics, "az_agent_rpo_seconds", kind="postgres") == 42.0
    assert value(metrics, "az_agent_postgres_dump_age_seconds", database="configdb") == 42.0

    points["segments"], points["postgres"], ages = None, None, None  # the zone stopped leading
    assert value(metrics, "az_agent_rpo_seconds", kind="segments") is None
    assert value(metrics, "az_agent_postgres_dump_age_seconds", database="configdb") is None


def test_info_names_the_zone_and_its_failover_group() -> None:
    metrics = AgentMetrics("az1", group="pair-a")
    assert value(metrics, "az_agent_info", zone="az1", group="pair-a") == 1
    assert value(AgentMetrics("az2"), "az_agent_info", zone="az2", group="default") == 1


def test_operation_start_is_exported_only_while_one_runs() -> None:
    metrics = AgentMetrics("az1")
    name = "az_agent_operation_started_timestamp_seconds"
    assert f"\n{name}" not in metrics.render().decode()  # nothing tracked yet
    running: list[tuple[str, float] | None] = [None]
    metrics.operation.track(lambda: running[0])
    assert f"\n{name}" not in metrics.render().decode()
    running[0] = ("activate", 1_700_000_000.0)
    assert value(metrics, name, kind="activate") == 1_700_000_000.0
    running[0] = None
    assert value(metrics, name, kind="activate") is None
