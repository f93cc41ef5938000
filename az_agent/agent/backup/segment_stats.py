"""How segment backup is measured and described, apart from how segments are copied.

The recovery point and the backup lag start when a segment became complete in Pinot
(:func:`completed_at_ms`), which Pinot records only for some segments; failures are counted under
a ``reason`` label (:func:`failure_reason`); :class:`BackupStats` is what ``/status`` shows, kept
across leader sessions.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from az_agent.drivers.errors import (
    CorruptObject,
    DriverError,
    Misconfigured,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from az_agent.drivers.pinot.models import SegmentMetadata, SegmentStatus
from az_agent.state import Clock, StateError

Key = tuple[str, str]
"""(table name with type, segment name): one segment, whatever its CRC."""


def completed_at_ms(segment: SegmentMetadata, seen_ms: int) -> int:
    """When ``segment`` became complete in Pinot, never later than when it was first seen.

    Pushes and refreshes carry their time. A committed realtime segment does not: its ZK
    creation time is when it started consuming, and its newest row (end time) precedes the
    commit, so the later of the two bounds the commit from below and the age is never understated.
    """
    exact = segment.refresh_time_ms or segment.push_time_ms
    if exact and segment.status is not SegmentStatus.DONE:
        return min(exact, seen_ms)
    bounds = [t for t in (segment.end_time_ms, segment.creation_time_ms, exact) if t]
    return min(max(bounds), seen_ms) if bounds else seen_ms


def now_ms(clock: Clock) -> int:
    """The clock's wall time in the milliseconds Pinot's timestamps use."""
    return int(clock.now().timestamp() * 1000)


def failure_reason(exc: BaseException) -> str:
    """The ``reason`` label of ``backup_failures`` for an error."""
    reasons: list[tuple[type[BaseException], str]] = [
        (NotFound, "not-found"),
        (CorruptObject, "corrupt"),
        (Unavailable, "unavailable"),
        (PermissionDenied, "permission-denied"),
        (Misconfigured, "misconfigured"),
        (DriverError, "driver"),
        (StateError, "state"),
    ]
    return next((label for kind, label in reasons if isinstance(exc, kind)), "internal")


def _segment(key: Key | None) -> dict[str, str]:
    return {} if key is None else {"table": key[0], "segment": key[1]}


@dataclass
class BackupStats:
    """What ``/status`` shows about segment backup, kept across the leader sessions."""

    segments: int = 0
    bytes: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    documents: Counter[str] = field(default_factory=Counter)
    vanished_total: int = 0
    vanished: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))
    last_error: dict[str, Any] | None = None
    last_segment: dict[str, Any] | None = None
    tables: list[str] = field(default_factory=list)
    last_poll: datetime | None = None

    def failed(self, key: Key | None, reason: str, exc: BaseException, at: datetime) -> None:
        self.failures[reason] += 1
        error = f"{type(exc).__name__}: {exc}"
        self.last_error = {**_segment(key), "reason": reason, "error": error, "at": at.isoformat()}

    def vanish(self, key: Key, crc: str, why: str, at: datetime) -> None:
        self.vanished_total += 1
        self.vanished.append({**_segment(key), "crc": crc, "why": why, "at": at.isoformat()})

    def backed_up(self, key: Key, crc: str, size: int, lag: float, at: datetime) -> None:
        self.segments += 1
        self.bytes += size
        self.last_segment = {
            **_segment(key),
            "crc": crc,
            "size": size,
            "lagSeconds": round(lag, 3),
            "at": at.isoformat(),
        }

    def polled(self, tables: list[str], at: datetime) -> None:
        self.tables = tables
        self.last_poll = at

    def describe(self) -> dict[str, Any]:
        return {
            "segmentsBackedUp": self.segments,
            "bytesBackedUp": self.bytes,
            "lagSeconds": self.last_segment["lagSeconds"] if self.last_segment else None,
            "lastSegment": self.last_segment,
            "failures": dict(self.failures),
            "lastError": self.last_error,
            "vanished": {"total": self.vanished_total, "recent": list(self.vanished)},
            "tableConfigsSaved": self.documents["table-config"],
            "schemasSaved": self.documents["schema"],
            "tables": self.tables,
            "lastPollAt": self.last_poll.isoformat() if self.last_poll else None,
        }


__all__ = ["BackupStats", "Key", "completed_at_ms", "failure_reason", "now_ms"]
