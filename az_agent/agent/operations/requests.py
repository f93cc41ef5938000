"""The operator's requests, validated: what ``/pause`` and ``/activate`` were asked to do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from az_agent.agent.config import ZONE_PATTERN
from az_agent.agent.errors import InvalidParameter


@dataclass(frozen=True, slots=True)
class PauseRequest:
    force: bool = False
    """Skip waiting for consuming segments to commit (Kafka or Pinot unreachable)."""
    wait_seconds: int | None = None
    """How long the HTTP call waits for the pause to finish before answering 202."""


@dataclass(frozen=True, slots=True)
class ActivateRequest:
    zone: str
    latest_time: datetime | None = None
    batch_size: int | None = None
    force: bool = False
    dry_run: bool = False
    namespace: str | None = None
    force_pause: bool = False
    automatic: str | None = None
    """Set by the automatic failover: why it activated (never from the HTTP API)."""

    @classmethod
    def from_query(
        cls,
        *,
        zone: str | None,
        latest_time: datetime | None,
        batch_size: int | None,
        force: bool,
        dry_run: bool,
        namespace: str | None,
        force_pause: bool,
    ) -> ActivateRequest:
        if not zone:
            raise InvalidParameter("zone", "required: the zone id of the source backup")
        if not ZONE_PATTERN.match(zone):
            raise InvalidParameter("zone", f"{zone!r} is not a valid zone id")
        return cls(zone, latest_time, batch_size, force, dry_run, namespace, force_pause)

    def describe(self) -> dict[str, object]:
        return {
            "zone": self.zone,
            "latestTime": self.latest_time.isoformat() if self.latest_time else None,
            "batchSize": self.batch_size,
            "force": self.force,
            "dryRun": self.dry_run,
            "namespace": self.namespace,
            "automatic": self.automatic,
        }
