"""The agent's Prometheus metrics, in a registry of its own (one per agent, so tests can run
two agents in one process).

Recovery point per data kind is the headline: for segments, the age of the oldest segment that
is complete in Pinot but not yet durable in the bucket, or how long Pinot has gone unseen when
that is older (see :mod:`~az_agent.agent.backup.segments`); for PostgreSQL, the age of the
newest good dump. Both are computed when Prometheus scrapes (:class:`RecoveryPoints`) and exist
only while the zone backs up: a standby or paused zone exports no ``az_agent_rpo_seconds``
series at all, so an RPO alert neither pages for a healthy standby nor reads 0 for it.

Values that mean nothing until something happened once (the last activation's or pause's
duration) are absent until then (:class:`LastValue`), and counters export no ``_created``
series (``disable_created_metrics``: one process-wide switch in prometheus-client).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Before any Counter is made: prometheus-client reads the switch when each one is created.
disable_created_metrics()  # type: ignore[no-untyped-call]

RecoverySource = Callable[[], float | None]
"""A data kind's recovery point in seconds, or None while this zone does not back it up."""
DumpAgesSource = Callable[[], Mapping[str, float] | None]
"""Per database, the age of its newest good dump; None while this zone does not back up."""
OperationSource = Callable[[], tuple[str, float] | None]
"""The running operation's kind and start (Unix seconds); None while none runs."""


class LastValue(Collector):
    """A gauge without labels that is absent until :meth:`set` (a duration of something that
    has not happened yet is no number, and 0 would read as "instant")."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name, self._documentation = name, documentation
        self._value: float | None = None

    def set(self, value: float) -> None:
        self._value = value

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation)
        if self._value is not None:
            family.add_metric([], self._value)
        return [family]


class RecoveryPoints(Collector):
    """``az_agent_rpo_seconds{kind}`` and ``az_agent_postgres_dump_age_seconds{database}``,
    asked of the backup loops at scrape time, so an age is never as old as the last loop round;
    a loop that does not back up (None) has no series."""

    RPO = "az_agent_rpo_seconds"
    RPO_HELP = (
        "Recovery point, only while this zone backs up: segments, the age of the oldest segment "
        "complete in Pinot and not yet durable, or how long Pinot went unseen beyond one poll; "
        "postgres, the age of the oldest of the newest good dumps."
    )
    DUMP_AGE = "az_agent_postgres_dump_age_seconds"
    DUMP_AGE_HELP = "Age of the newest good dump, only while this zone backs up."

    def __init__(self) -> None:
        self._kinds: dict[str, RecoverySource] = {}
        self._dumps: DumpAgesSource | None = None

    def track(self, kind: str, source: RecoverySource) -> None:
        """Export ``kind``'s recovery point from ``source`` (one source per kind)."""
        self._kinds[kind] = source

    def track_dumps(self, source: DumpAgesSource) -> None:
        self._dumps = source

    def describe(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily(self.RPO, self.RPO_HELP, labels=["kind"]),
            GaugeMetricFamily(self.DUMP_AGE, self.DUMP_AGE_HELP, labels=["database"]),
        ]

    def collect(self) -> Iterable[Metric]:
        rpo = GaugeMetricFamily(self.RPO, self.RPO_HELP, labels=["kind"])
        for kind, source in sorted(self._kinds.items()):
            seconds = source()
            if seconds is not None:
                rpo.add_metric([kind], seconds)
        ages = GaugeMetricFamily(self.DUMP_AGE, self.DUMP_AGE_HELP, labels=["database"])
        dumps = self._dumps() if self._dumps is not None else None
        for database, age in sorted((dumps or {}).items()):
            ages.add_metric([database], age)
        return [rpo, ages]


class RunningOperation(Collector):
    """``az_agent_operation_started_timestamp_seconds{kind}``: when the running operation
    started (an activation resumed after a restart keeps its first start), absent while none
    runs; ``time() - it`` is how long it has been running (the "activation stuck" alert)."""

    NAME = "az_agent_operation_started_timestamp_seconds"
    HELP = "Start of the running operation (pause, activate, resume), Unix seconds; absent if none."

    def __init__(self) -> None:
        self._source: OperationSource | None = None

    def track(self, source: OperationSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["kind"])]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["kind"])
        running = self._source() if self._source is not None else None
        if running is not None:
            family.add_metric([running[0]], running[1])
        return [family]


class StandbyLag(Collector):
    """How far a warm standby is behind the primary's log (``standby/warm.py``): entries not
    applied yet and the age of the oldest of them; absent unless this zone follows one."""

    ENTRIES = "az_agent_standby_behind_entries"
    SECONDS = "az_agent_standby_behind_seconds"
    ENTRIES_HELP = "Warm standby: entries of the primary's log not applied here yet."
    SECONDS_HELP = "Warm standby: how long the oldest entry not applied yet has waited; 0 if none."

    def __init__(self) -> None:
        self._source: Callable[[], tuple[float, float] | None] | None = None

    def track(self, source: Callable[[], tuple[float, float] | None]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily(self.ENTRIES, self.ENTRIES_HELP),
            GaugeMetricFamily(self.SECONDS, self.SECONDS_HELP),
        ]

    def collect(self) -> Iterable[Metric]:
        lag = self._source() if self._source is not None else None
        if lag is None:
            return []
        return [
            GaugeMetricFamily(self.ENTRIES, self.ENTRIES_HELP, value=lag[0]),
            GaugeMetricFamily(self.SECONDS, self.SECONDS_HELP, value=lag[1]),
        ]


class AgentMetrics:
    """Every metric the agent exports; loops and operations update these attributes."""

    def __init__(self, zone: str, group: str = "default") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.info = Gauge(
            "az_agent_info",
            "Constant 1, labelled with the zone and its failover group (the alerts join on it).",
            ["zone", "group"],
            registry=reg,
        )
        self.info.labels(zone=zone, group=group).set(1)
        self.state = Gauge(
            "az_agent_state", "1 for the agent's current failover state.", ["state"], registry=reg
        )
        self.leader = Gauge(
            "az_agent_leader", "1 while this agent holds its zone's lease.", registry=reg
        )
        self.epoch = Gauge(
            "az_agent_epoch", "Fencing token (lease epoch) held or last held.", registry=reg
        )
        self.primary_term = Gauge(
            "az_agent_primary_term",
            "The failover group's term (primary record), as last read; the pair-wide fence.",
            registry=reg,
        )
        self.primary = Gauge(
            "az_agent_primary",
            "1 while the group's primary record names this agent's zone.",
            registry=reg,
        )
        self.fenced = Gauge(
            "az_agent_fenced",
            "1 when another agent took this zone with a higher epoch.",
            registry=reg,
        )
        self.recovery = RecoveryPoints()
        reg.register(self.recovery)
        self.standby_lag = StandbyLag()
        reg.register(self.standby_lag)
        self.segments_backed_up = Counter(
            "az_agent_segments_backed_up",
            "Segments copied to the bucket and committed.",
            registry=reg,
        )
        self.segment_bytes_backed_up = Counter(
            "az_agent_segment_bytes_backed_up", "Bytes of segments committed.", registry=reg
        )
        self.segments_pending = Gauge(
            "az_agent_segments_pending",
            "Segments complete in Pinot, not yet in the bucket.",
            registry=reg,
        )
        self.segment_backup_lag = Gauge(
            "az_agent_segment_backup_lag_seconds",
            "Commit-in-Pinot to durable-in-bucket delay of the last segment backed up.",
            registry=reg,
        )
        self.backup_failures = Counter(
            "az_agent_backup_failures",
            "Backup attempts that failed.",
            ["kind", "reason"],
            registry=reg,
        )
        self.restore_failures = Counter(
            "az_agent_restore_failures",
            "Restore steps that failed.",
            ["kind", "reason"],
            registry=reg,
        )
        self.dump_duration = Gauge(
            "az_agent_postgres_dump_duration_seconds",
            "Duration of the last dump.",
            ["database"],
            registry=reg,
        )
        self.dump_size = Gauge(
            "az_agent_postgres_dump_size_bytes",
            "Size of the last dump.",
            ["database"],
            registry=reg,
        )
        self.activation_duration = LastValue(
            "az_agent_activation_duration_seconds",
            "Recovery time: duration of the last completed activation; absent before one.",
        )
        reg.register(self.activation_duration)
        self.activation_phase_duration = Gauge(
            "az_agent_activation_phase_duration_seconds",
            "Duration of each phase of the last activation.",
            ["phase"],
            registry=reg,
        )
        self.pause_duration = LastValue(
            "az_agent_pause_duration_seconds",
            "Duration of the last completed pause; absent before one.",
        )
        reg.register(self.pause_duration)
        self.pause_phase_duration = Gauge(
            "az_agent_pause_phase_duration_seconds",
            "Duration of each phase of the last pause.",
            ["phase"],
            registry=reg,
        )
        self.operation = RunningOperation()
        reg.register(self.operation)
        self.rehydration_segments = Gauge(
            "az_agent_rehydration_segments",
            "Segments of the current activation.",
            ["of"],
            registry=reg,
        )
        self.rehydration_bytes = Gauge(
            "az_agent_rehydration_bytes", "Bytes of the current activation.", ["of"], registry=reg
        )
        self.rehydration_rate = Gauge(
            "az_agent_rehydration_bytes_per_second",
            "Throughput of the running rehydration; 0 when none runs.",
            registry=reg,
        )
        self.errors = Counter("az_agent_errors", "Errors by kind.", ["kind"], registry=reg)
        self.silence_failures = Counter(
            "az_agent_silence_failures",
            "Attempts to silence alerts that failed (Alertmanager down or refusing); retried.",
            registry=reg,
        )
        self.dependency_up = Gauge(
            "az_agent_dependency_up",
            "1 when the dependency answered its last probe (bucket, pinot, postgres, "
            "alertmanager, kubernetes), 0 when it did not.",
            ["dependency"],
            registry=reg,
        )
        self.zone_health = Gauge(
            "az_agent_zone_health",
            "1 when the zone's health check passed, 0 when it failed: this zone as this agent "
            "measured it, the peer zone as it published itself (standby/health.py).",
            ["zone", "check"],
            registry=reg,
        )
        self.automatic_activations = Counter(
            "az_agent_automatic_activations",
            "Activations the automatic failover started, by reason (lease-expired, unhealthy).",
            ["reason"],
            registry=reg,
        )
        self.loop_restarts = Counter(
            "az_agent_loop_restarts",
            "Crashes of a long-running loop, each followed by a restart with backoff.",
            ["loop"],
            registry=reg,
        )

    def set_state(self, state: StrEnum) -> None:
        """One series per member of ``state``'s enum: 1 for ``state``, 0 for the others."""
        for candidate in type(state):
            self.state.labels(state=candidate.value).set(1 if candidate is state else 0)

    def set_phase_duration(self, kind: str, phase: str, seconds: float) -> None:
        """Record how long ``phase`` of an operation of ``kind`` took (activate and pause)."""
        gauges = {"activate": self.activation_phase_duration, "pause": self.pause_phase_duration}
        gauge = gauges.get(kind)
        if gauge is not None:
            gauge.labels(phase=phase).set(seconds)

    def set_rehydration(
        self, segments_done: int, segments_total: int, bytes_done: int, bytes_total: int
    ) -> None:
        """Publish a rehydration's progress; ``done`` is clamped to ``total``."""
        self.rehydration_segments.labels(of="total").set(segments_total)
        self.rehydration_segments.labels(of="done").set(min(segments_done, segments_total))
        self.rehydration_bytes.labels(of="total").set(bytes_total)
        self.rehydration_bytes.labels(of="done").set(min(bytes_done, bytes_total))

    def render(self) -> bytes:
        return generate_latest(self.registry)
