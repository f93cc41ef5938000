"""Object stores that misbehave on purpose, wrapped around a real one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from az_agent.drivers.errors import Unavailable
from az_agent.drivers.storage.base import Body, ObjectInfo, ObjectReader, ObjectStore
from tests.servers.wrapped import WrappedStore


class StallingStore(WrappedStore):
    """Takes the first chunk of an upload, then hangs, as a stuck network would."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.receiving = asyncio.Event()

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        assert not isinstance(body, bytes)
        async for _ in body:
            self.receiving.set()
            await asyncio.Event().wait()
        raise AssertionError("unreachable")


class FailingStore(WrappedStore):
    """Fails an upload after a few chunks, as a store that stopped answering would."""

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        assert not isinstance(body, bytes)
        received = 0
        async for _ in body:
            received += 1
            if received == 2:
                raise Unavailable("injected: the store stopped answering")
        raise AssertionError("the dump was expected to be larger")


class _StallingReader(ObjectReader):
    """Hands out the first chunk of a real read, then hangs."""

    def __init__(self, inner: ObjectReader, reading: asyncio.Event) -> None:
        self.info = inner.info
        self._inner = inner
        self._reading = reading

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk
            self._reading.set()
            await asyncio.Event().wait()


class StallingReadStore(WrappedStore):
    """Reads hang after their first chunk, as a stuck download would."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.reading = asyncio.Event()

    @asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        async with self.inner.open(key, chunk_size=chunk_size) as reader:
            yield _StallingReader(reader, self.reading)

    def open(
        self, key: str, *, chunk_size: int = 1 << 20
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self._open(key, chunk_size)


__all__ = ["FailingStore", "StallingReadStore", "StallingStore", "WrappedStore"]
