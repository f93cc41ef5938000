"""Full-jitter exponential backoff for transient storage failures.

Only ``Unavailable`` is retried: throttling (S3 SlowDown, GCS 429, Azure 503), 5xx and
connection errors, which each driver maps to it. Precondition failures, not-found and
permission errors are answers, not failures, and are returned to the caller at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from az_agent.drivers.errors import Unavailable
from az_agent.drivers.storage.config import RetrySettings

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: ``attempts`` in total, delays drawn from ``[0, min(cap, base * 2**n)]``."""

    attempts: int = 6
    base_delay: float = 0.1
    max_delay: float = 5.0

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> RetryPolicy:
        """The policy a ``cloudStorage.retry`` block describes."""
        return cls(settings.attempts, settings.base_delay_seconds, settings.max_delay_seconds)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**attempt)]."""
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        return (rng or random).uniform(0.0, ceiling)

    async def run(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()`` until it succeeds, raises a non-retryable error, or attempts run out."""
        for attempt in range(self.attempts):
            try:
                return await call()
            except Unavailable as exc:
                if attempt + 1 >= self.attempts:
                    raise
                pause = self.delay(attempt)
                log.debug(
                    "retrying %s after %.3fs (attempt %d/%d): %s",
                    operation,
                    pause,
                    attempt + 1,
                    self.attempts,
                    exc,
                )
                await asyncio.sleep(pause)
        raise AssertionError("unreachable: attempts >= 1")
