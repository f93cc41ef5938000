"""What the segment backup records of each attempt: the waiting set, metrics, status, log."""

from __future__ import annotations

import logging

from az_agent.agent.backoff import backoff_delay
from az_agent.agent.backup.discovery import Outcome, Pending, forget
from az_agent.agent.backup.segment_stats import BackupStats, Key, failure_reason
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.state import Clock, SegmentPayload

log = logging.getLogger(__name__)

KIND = "segments"
"""The ``kind`` label of the backup metrics."""


class Bookkeeping:
    """Settles an attempt: a failure waits for its backoff, a vanished or copied segment
    leaves the waiting set; each is counted, shown in ``/status`` and logged once."""

    def __init__(
        self, metrics: AgentMetrics, stats: BackupStats, clock: Clock, retry: tuple[float, float]
    ) -> None:
        self._metrics = metrics
        self._stats = stats
        self._clock = clock
        self._retry = retry

    def backoff(self, attempts: int) -> float:
        return backoff_delay(attempts, *self._retry)

    def failed(self, pending: dict[Key, Pending], item: Pending, exc: BaseException) -> Outcome:
        item.attempts += 1
        item.error = exc
        delay = self.backoff(item.attempts)
        item.next_try = self._clock.monotonic() + delay
        reason = failure_reason(exc)
        self._metrics.backup_failures.labels(kind=KIND, reason=reason).inc()
        self._stats.failed(item.key, reason, exc, self._clock.now())
        log.warning(
            "backing up %s failed (%s, attempt %d); retrying in %.1f s: %s",
            item.describe(),
            reason,
            item.attempts,
            delay,
            exc,
        )
        return Outcome.FAILED

    def vanished(self, pending: dict[Key, Pending], item: Pending, why: str) -> None:
        forget(pending, item)
        self._metrics.backup_failures.labels(kind=KIND, reason="vanished").inc()
        self._stats.vanish(item.key, item.crc, why, self._clock.now())
        log.warning("segment %s vanished, not backed up: %s", item.describe(), why)

    def succeeded(
        self, pending: dict[Key, Pending], item: Pending, payload: SegmentPayload, seconds: float
    ) -> None:
        forget(pending, item)
        lag = max(payload.backed_up_at.timestamp() - item.completed_ms / 1000, 0.0)
        self._metrics.segments_backed_up.inc()
        self._metrics.segment_bytes_backed_up.inc(payload.size)
        self._metrics.segment_backup_lag.set(lag)
        self._stats.backed_up(item.key, payload.crc, payload.size, lag, payload.backed_up_at)
        log.info(
            "backed up %s: %d bytes in %.2f s, %.2f s after it completed in Pinot",
            item.describe(),
            payload.size,
            seconds,
            lag,
        )
