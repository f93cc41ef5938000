"""The shapes of the background work an active agent runs while it leads its zone."""

from __future__ import annotations

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
