"""Time, injectable: the lease judges expiry on a monotonic clock and tests must not sleep.

Two readings with different jobs: :meth:`Clock.monotonic` measures durations on this machine
and is the only one that decides leadership; :meth:`Clock.now` is wall-clock UTC, written into
records for operators and for "as of" queries, never compared across machines for safety.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """What the state layer needs to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """The real clocks of this process."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
