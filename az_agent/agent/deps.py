"""Everything the agent talks to, built once by :mod:`~az_agent.agent.wiring` (or a test)."""

from __future__ import annotations

from dataclasses import dataclass

from az_agent.agent.config import AgentConfig
from az_agent.agent.leadership.loops import ColdStart, DatabaseBackup, Retention, SegmentBackup
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.alerts.base import SilenceManager
from az_agent.drivers.kubernetes.service_proxy import KubernetesServiceProxy
from az_agent.drivers.pinot.base import PinotController
from az_agent.drivers.postgres.base import PostgresDumper
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import Clock


@dataclass
class AgentDeps:
    """The configuration, the bucket, the clock, the zone's systems and the backup loops."""

    config: AgentConfig
    store: ObjectStore
    clock: Clock
    pinot: PinotController
    dumper: PostgresDumper | None
    silences: SilenceManager
    segment_backup: SegmentBackup
    database_backup: DatabaseBackup | None
    metrics: AgentMetrics
    service_proxy: KubernetesServiceProxy | None = None
    retention: Retention | None = None
    cold_standby: ColdStart | None = None
    """The zone's workloads scaled by activation and pause (``coldStandby``); None when not
    configured. A protocol here because ``standby/`` and ``operations/`` may not import each
    other: wiring builds it, operations and leadership use it."""
