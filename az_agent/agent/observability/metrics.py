"""The agent's Prometheus metrics, in a registry of its own (one per agent, so tests can run
two agents in one process).

Recovery point per data kind is the headline: for segments, the age of the oldest segment that
is complete in Pinot but not yet durable in the bucket (0 when nothing is pending, so an idle
system does not look late); for PostgreSQL, the age of the newest good dump.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class AgentMetrics:
    """Every metric the agent exports; loops and operations update these attributes."""

    def __init__(self, zone: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.info = Gauge(
            "az_agent_info", "Constant 1, labelled with the zone.", ["zone"], registry=reg
        )
        self.info.labels(zone=zone).set(1)
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
        self.rpo_seconds = Gauge(
            "az_agent_rpo_seconds",
            "Recovery point: age of the oldest data not yet durable (segments) or of the newest "
            "good dump (postgres); 0 when nothing is pending.",
            ["kind"],
            registry=reg,
        )
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
        self.dump_age = Gauge(
            "az_agent_postgres_dump_age_seconds",
            "Age of the newest good dump.",
            ["database"],
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
        self.activation_duration = Gauge(
            "az_agent_activation_duration_seconds",
            "Recovery time: duration of the last completed activation.",
            registry=reg,
        )
        self.activation_phase_duration = Gauge(
            "az_agent_activation_phase_duration_seconds",
            "Duration of each phase of the last activation.",
            ["phase"],
            registry=reg,
        )
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
            "az_agent_rehydration_bytes_per_second", "Current rehydration throughput.", registry=reg
        )
        self.errors = Counter("az_agent_errors", "Errors by kind.", ["kind"], registry=reg)
        self.silence_failures = Counter(
            "az_agent_silence_failures",
            "Attempts to silence alerts that failed (Alertmanager down or refusing); retried.",
            registry=reg,
        )

    def set_state(self, state: StrEnum) -> None:
        """One series per member of ``state``'s enum: 1 for ``state``, 0 for the others."""
        for candidate in type(state):
            self.state.labels(state=candidate.value).set(1 if candidate is state else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
