"""A store that delegates every call to a real one: the base of the tests' misbehaving stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from az_agent.drivers.storage.base import Body, ObjectInfo, ObjectReader, ObjectStore


class WrappedStore(ObjectStore):
    """Delegates to a real store; subclasses override what they interfere with."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        return await self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match)

    def open(
        self, key: str, *, chunk_size: int = 1 << 20
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self.inner.open(key, chunk_size=chunk_size)

    async def head(self, key: str) -> ObjectInfo:
        return await self.inner.head(key)

    def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix, page_size=page_size)

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        await self.inner.delete(key, if_match=if_match)

    async def check(self) -> None:
        await self.inner.check()

    @property
    def write_spacing(self) -> float:
        return self.inner.write_spacing

    async def close(self) -> None:
        await self.inner.close()
