"""The file store's cleanup survives a second cancellation (TaskGroups deliver them when a
sibling fails while the group is being cancelled): no handle or temporary file leaks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from az_agent.drivers.storage.file import FileObjectStore


def open_paths(fragment: str) -> list[str]:
    """Files this process holds open whose path contains ``fragment``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if fragment in target:
                found.append(target)
    return found


@contextlib.contextmanager
def busy_threads(loop: asyncio.AbstractEventLoop) -> Iterator[threading.Event]:
    """The loop's default executor, one thread, kept busy until the event is set: the next
    ``to_thread`` call queues, as it does when every thread is taken at shutdown."""
    previous = getattr(loop, "_default_executor", None)
    pool = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(pool)
    gate = threading.Event()
    pool.submit(gate.wait)
    try:
        yield gate
    finally:
        gate.set()
        pool.shutdown(wait=True)
        if previous is not None:
            loop.set_default_executor(previous)


async def test_a_put_cancelled_twice_still_closes_its_temporary_file(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "bucket")
    await store.check()
    streaming = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"the first part"
        streaming.set()
        await asyncio.Event().wait()

    put = asyncio.create_task(store.put("key", body()))
    await asyncio.wait_for(streaming.wait(), 5)
    for _ in range(500):  # the first part is being written; the put then waits for the next
        if open_paths(".part"):
            break
        await asyncio.sleep(0.01)
    assert open_paths(".part"), "the temporary file is open while the put streams"
    with busy_threads(asyncio.get_running_loop()) as gate:
        put.cancel()
        for _ in range(3):
            await asyncio.sleep(0)  # the put is in its cleanup, waiting for a thread
        put.cancel()  # the second cancellation
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await put
        for _ in range(100):
            if not open_paths(".part"):
                break
            await asyncio.sleep(0.01)
    assert open_paths(".part") == [], "the temporary file's handle leaked"
    assert not list((tmp_path / "bucket").rglob("*.part"))
    await store.close()
