"""Waiting for what a stopped agent leaves behind, before the leaked-task check looks."""

from __future__ import annotations

import asyncio
from typing import Any


async def settle(before: set[asyncio.Task[Any]], within: float = 2.0) -> None:
    """Wait until the ``asyncio.to_thread`` tasks started since ``before`` are done (at most
    ``within`` seconds).

    The file store opens a file in a thread, which a cancellation cannot stop: the task behind
    it ends only when the thread does, a moment after the agent that started it was stopped.
    """
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        threads = [
            task
            for task in asyncio.all_tasks() - before
            if not task.done() and getattr(task.get_coro(), "__name__", "") == "to_thread"
        ]
        if not threads:
            return
        await asyncio.sleep(0.01)
