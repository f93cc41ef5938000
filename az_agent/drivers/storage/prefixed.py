"""Applies the configured key prefix once, so drivers and callers never handle it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace

from az_agent.drivers.storage.base import (
    DEFAULT_CHUNK_SIZE,
    Body,
    ObjectInfo,
    ObjectReader,
    ObjectStore,
)
from az_agent.drivers.storage.keys import join_key, validate_key


class PrefixedObjectStore(ObjectStore):
    """An :class:`ObjectStore` whose keys all live under ``prefix`` in ``inner``."""

    def __init__(self, inner: ObjectStore, prefix: str) -> None:
        self._inner = inner
        self._prefix = join_key(prefix)
        if self._prefix:
            validate_key(self._prefix)

    @property
    def inner(self) -> ObjectStore:
        return self._inner

    def _full(self, key: str) -> str:
        return join_key(self._prefix, validate_key(key))

    def _strip(self, info: ObjectInfo) -> ObjectInfo:
        if not self._prefix:
            return info
        return replace(info, key=info.key[len(self._prefix) + 1 :])

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        info = await self._inner.put(
            self._full(key), body, if_none_match=if_none_match, if_match=if_match
        )
        return self._strip(info)

    @asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        async with self._inner.open(self._full(key), chunk_size=chunk_size) as reader:
            reader.info = self._strip(reader.info)
            yield reader

    def open(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self._open(key, chunk_size)

    async def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The inner store's own ``get``: a driver may read a whole object cheaper than its
        streamed :meth:`open` (S3)."""
        data, info = await self._inner.get(self._full(key))
        return data, self._strip(info)

    async def head(self, key: str) -> ObjectInfo:
        return self._strip(await self._inner.head(self._full(key)))

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        full = join_key(self._prefix, prefix) if prefix else self._prefix
        if self._prefix and (not prefix or prefix.endswith("/")):
            full += "/"
        async for info in self._inner.list(full, page_size=page_size):
            yield self._strip(info)

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        await self._inner.delete(self._full(key), if_match=if_match)

    async def check(self) -> None:
        await self._inner.check()

    @property
    def write_spacing(self) -> float:
        return self._inner.write_spacing

    async def close(self) -> None:
        await self._inner.close()
