"""Bytes of request bodies a store holds in memory at once, shared by all its uploads.

Without it the memory of a backup grows with the segment size: each of ``concurrency``
uploads buffers a whole single PUT (up to 24 MiB) or two parts, so 16 MiB segments took three
times what 4 MiB ones did. With it the agent's peak is the same whatever the segment size,
and a pod's memory limit can be set once.

A holder takes all it needs in one request and gives it back at the end, never asking for more
while it holds some, so no two uploads can wait on each other. Requests are served in order of
arrival, so a large one is not starved by a stream of small ones; one larger than the whole
budget is served alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"a memory budget must be positive, not {limit}")
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def holding(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes (at most the whole budget) for the block, waiting for room."""
        size = max(0, min(size, self.limit))
        await self._take(size)
        try:
            yield
        finally:
            self._give(size)

    async def _take(self, size: int) -> None:
        if not self._waiting and self.used + size <= self.limit:
            self.used += size
            return
        turn: tuple[int, asyncio.Future[None]] = (size, asyncio.get_running_loop().create_future())
        self._waiting.append(turn)
        try:
            await turn[1]
        except asyncio.CancelledError:
            if turn[1].done() and not turn[1].cancelled():
                self._give(size)  # granted just as it was cancelled
            else:
                if turn in self._waiting:  # else already dropped by _serve
                    self._waiting.remove(turn)
                self._serve()  # it may have been the one the next were waiting behind
            raise

    def _give(self, size: int) -> None:
        self.used -= size
        self._serve()

    def _serve(self) -> None:
        while self._waiting:
            size, granted = self._waiting[0]
            if granted.done():  # cancelled, its owner not yet resumed to withdraw
                self._waiting.popleft()
                continue
            if self.used + size > self.limit:
                return
            self._waiting.popleft()
            self.used += size
            granted.set_result(None)
