"""Shared by the state tests: a store wrapper that counts calls and injects faults, builders."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from az_agent.drivers.errors import Unavailable
from az_agent.drivers.storage.base import (
    DEFAULT_CHUNK_SIZE,
    Body,
    ObjectInfo,
    ObjectReader,
    ObjectStore,
)
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state.entries import SegmentPayload
from az_agent.state.keys import segment_key

Hook = Callable[[str, str], Awaitable[None]]


async def _nothing(op: str, key: str) -> None:
    del op, key


class Overlap:
    """A ``before`` hook that holds each call of ``ops`` a moment and records the most that
    were in flight at once: 1 means one after the other."""

    def __init__(self, ops: tuple[str, ...] = ("get", "head"), hold: float = 0.02) -> None:
        self.ops, self.hold = ops, hold
        self.in_flight = self.peak = 0

    async def __call__(self, op: str, key: str) -> None:
        if op not in self.ops:
            return
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.in_flight -= 1


class FaultyStore(ObjectStore):
    """Delegates to ``inner``; counts calls; ``down`` fails every call before it is sent;
    ``before``/``after`` hooks run around each operation and may raise, block or act."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.keys: list[tuple[str, str]] = []
        self.down = False
        self.lose_put_responses = 0
        self.before: Hook = _nothing
        self.after: Hook = _nothing

    async def _enter(self, op: str, key: str) -> None:
        self.calls[op] += 1
        self.keys.append((op, key))
        if self.down:
            raise Unavailable(f"injected outage: {op} {key}")
        await self.before(op, key)

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        await self._enter("put", key)
        info = await self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match)
        if self.lose_put_responses > 0:
            self.lose_put_responses -= 1
            raise Unavailable(f"injected lost response: put {key} landed")
        await self.after("put", key)
        return info

    @asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        await self._enter("get", key)
        async with self.inner.open(key, chunk_size=chunk_size) as reader:
            yield reader
        await self.after("get", key)

    def open(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self._open(key, chunk_size)

    async def head(self, key: str) -> ObjectInfo:
        await self._enter("head", key)
        info = await self.inner.head(key)
        await self.after("head", key)
        return info

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        await self._enter("list", prefix)
        async for info in self.inner.list(prefix, page_size=page_size):
            yield info

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        await self._enter("delete", key)
        await self.inner.delete(key, if_match=if_match)
        await self.after("delete", key)

    async def check(self) -> None:
        await self.inner.check()

    @property
    def write_spacing(self) -> float:
        return self.inner.write_spacing

    async def close(self) -> None:
        await self.inner.close()


async def file_store(root: Path) -> FaultyStore:
    inner = FileObjectStore(root)
    await inner.check()
    return FaultyStore(inner)


def segment(
    zone: str,
    name: str,
    crc: str = "1234",
    *,
    table: str = "metrics_OFFLINE",
    data: bytes = b"tarball",
    key: str | None = None,
) -> SegmentPayload:
    """A segment payload whose object lives at the canonical key unless ``key`` is given."""
    return SegmentPayload(
        table=table,
        table_type="REALTIME" if table.endswith("_REALTIME") else "OFFLINE",
        segment=name,
        crc=crc,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        key=key or segment_key(zone, table, name, crc),
        start_time_ms=1_700_000_000_000,
        end_time_ms=1_700_003_600_000,
        commit_time_ms=1_700_003_700_000,
        backed_up_at=datetime(2030, 1, 1, tzinfo=UTC),
    )
