"""Resident-memory sampling shared by the benchmarks: what the process really holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


def rss_bytes() -> int:
    """This process's resident set size now, from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@contextlib.asynccontextmanager
async def sampled(interval: float = 0.02) -> AsyncIterator[list[int]]:
    """Sample this process's RSS while the body runs; the list holds every sample."""
    samples = [rss_bytes()]

    async def sample() -> None:
        while True:
            samples.append(rss_bytes())
            await asyncio.sleep(interval)

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        samples.append(rss_bytes())
