"""Two independent reads in one round trip, the caller's own read staying in the caller's task.

``asyncio.gather`` would move both into tasks of their own; what the caller reads first (a
lease, whose version its next write swaps against) stays in its task here, so the task that
acts on a read is the task that made it, as before the reads overlapped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
U = TypeVar("U")


async def beside(main: Coroutine[Any, Any, T], side: Coroutine[Any, Any, U]) -> tuple[T, U]:
    """``main`` awaited in this task while ``side`` runs in a task of its own; both results.

    Nothing is left running: when ``main`` fails, ``side`` is awaited (its outcome dropped)
    before the failure is raised; a cancellation cancels ``side`` too and waits for it.
    """
    running = asyncio.ensure_future(side)
    try:
        first = await main
    except asyncio.CancelledError:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        raise
    except BaseException:
        await asyncio.gather(running, return_exceptions=True)
        raise
    return first, await running
