"""How backups and their failures are described to operators: metric labels, ``/status`` JSON.

Shared by the backup and restore rooms, so neither imports the other.
"""

from __future__ import annotations

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
from az_agent.drivers.postgres.base import ToolFailed
from az_agent.state import DumpRecord

KIND = "postgres"
"""The ``kind`` label of the backup and restore metrics."""

_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (ToolFailed, "tool"), (NotFound, "not-found"), (Unavailable, "unavailable"),
    (PermissionDenied, "permission-denied"), (Misconfigured, "misconfigured"),
    (CorruptObject, "corrupt"), (DriverError, "driver"),
)  # fmt: skip


def failure_reason(exc: BaseException) -> str:
    """The ``reason`` label of ``backup_failures``/``restore_failures`` for an error."""
    return next((label for kind, label in _REASONS if isinstance(exc, kind)), "internal")


def describe_dump(record: DumpRecord, now: datetime | None = None) -> dict[str, Any]:
    """A dump as ``/status`` shows it (JSON-ready), with its age when ``now`` is given."""
    described: dict[str, Any] = {
        "seq": record.seq,
        "epoch": record.epoch,
        "key": record.key,
        "size": record.size,
        "sha256": record.sha256,
        "serverVersion": record.server_version,
        "startedAt": record.started_at.isoformat(),
        "finishedAt": record.finished_at.isoformat(),
        "committedAt": record.committed_at.isoformat(),
    }
    if now is not None:
        described["ageSeconds"] = max((now - record.started_at).total_seconds(), 0.0)
    return described
