"""An in-process agent running for a block: its ``run()`` started, awaited until recovery has
ended, then cancelled and awaited (the rigs of the standby tests and benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from az_agent.agent.daemon import Agent


@contextlib.asynccontextmanager
async def serving(agent: Agent, ready_within: float = 10) -> AsyncIterator[Agent]:
    """``agent`` running (as far as its methods go) for the block, then stopped."""
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    task = asyncio.create_task(agent.run(on_ready=on_ready))
    try:
        await asyncio.wait_for(ready.wait(), ready_within)
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
