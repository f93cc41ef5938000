"""Backoff for the agent's background retries (segments, dumps, rehydration).

Request-level retries live in the storage drivers (full jitter, seconds); these are slower
retries of whole units of work, where a delay drawn from half to all of the exponential ceiling
spreads many failing segments out without ever retrying one immediately.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, low: float, high: float, *, jitter: bool = True) -> float:
    """Delay before retry number ``attempt`` (1-based): ``low * 2**(attempt-1)`` capped at
    ``high``, scaled by a random factor in [0.5, 1] when ``jitter``."""
    ceiling = min(high, low * 2.0 ** min(max(attempt, 1) - 1, 30))
    return ceiling * random.uniform(0.5, 1.0) if jitter else ceiling
