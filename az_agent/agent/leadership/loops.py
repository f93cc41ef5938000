"""The shapes of the background work an active agent runs while it leads its zone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from az_agent.agent.leadership.session import LeaderSession


class SegmentBackup(Protocol):
    """Streams every completed Pinot segment to the bucket (issue: continuous segment backup)."""

    async def run(self, session: LeaderSession) -> None:
        """Back up new segments until cancelled; returns quietly when fenced or not leader."""

    async def flush(self, session: LeaderSession) -> int:
        """Back up everything that is backup-ready now (used by /pause); how many committed."""

    def status(self) -> dict[str, Any]: ...

    def rpo_seconds(self) -> float: ...


class DatabaseBackup(Protocol):
    """Dumps the configured PostgreSQL databases on a schedule and on demand."""

    async def run(self, session: LeaderSession) -> None: ...

    async def dump_now(self, reason: str) -> list[Any]: ...

    def status(self) -> dict[str, Any]: ...

    def rpo_seconds(self) -> float: ...


class Retention(Protocol):
    """Keeps the bucket's size tracking Pinot's: deleted segments, checkpoints, orphans."""

    async def run(self, session: LeaderSession) -> None:
        """A retention pass on a schedule until cancelled; returns when fenced or not leader."""


class ColdStart(Protocol):
    """A cold zone's workloads (``coldStandby``): their sizes recorded while the zone leads,
    scaled from zero by an activation and to zero after a pause (``standby/cold.py``)."""

    async def run(self, session: LeaderSession) -> None:
        """Record the workloads' replicas at once and whenever they change, until cancelled."""

    async def scale_up(self, progress: Callable[[str], Awaitable[None]]) -> str:
        """Scale up and wait until ready; ``progress`` gets a one-line status as it changes."""

    async def scale_down(self, epoch: int) -> str:
        """Record the current sizes (written under ``epoch``), then scale every workload to 0."""

    async def plan(self) -> dict[str, Any]:
        """What :meth:`scale_up` would do, for a dry run; nothing is changed."""

    async def ping(self) -> None:
        """One read of the workloads through the API server (readiness)."""
