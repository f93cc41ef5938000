"""Reads for the ``s3`` driver: a ``GetObject`` body streamed in chunks, resumed with a ranged
GET where a dropped connection left it.

A job apart from the store's requests: it reaches under aiobotocore's body to aiohttp's stream
(a copy fewer of every byte), and needs of the store only its retry policy, its error
translation and a resumed GET.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import aiohttp

from az_agent.drivers.errors import Unavailable
from az_agent.drivers.storage.base import ObjectInfo, ObjectReader
from az_agent.drivers.storage.retry import RetryPolicy


def _payload_stream(body: Any) -> aiohttp.StreamReader | None:
    """The aiohttp stream under an aiobotocore body, ``None`` if this aiobotocore hides it."""
    stream = getattr(getattr(body, "_raw_stream", None), "content", None)
    return stream if isinstance(stream, aiohttp.StreamReader) else None


class S3Reader(ObjectReader):
    """Streams a ``GetObject`` body; a connection lost mid-read resumes with a ranged GET.

    ``errors`` translates the vendor errors of a read, ``resume`` is a GET of the rest from an
    offset (``Unavailable`` if the object was replaced meanwhile).
    """

    def __init__(
        self,
        info: ObjectInfo,
        body: Any,
        chunk_size: int,
        *,
        retry: RetryPolicy,
        errors: Callable[[str], AbstractContextManager[None]],
        resume: Callable[[ObjectInfo, int], Awaitable[Any]],
    ) -> None:
        self.info = info
        self._retry = retry
        self._errors = errors
        self._resume = resume
        self._chunk_size = chunk_size
        self._use(body)

    def _use(self, body: Any) -> None:
        self._body = body
        self._stream = _payload_stream(body)

    async def _received(self, limit: int) -> bytes:
        """The next bytes as the connection delivered them (through aiobotocore, at most
        ``limit``), ``b""`` at the end.

        Straight from aiohttp's buffer, each piece as received: aiobotocore's ``read(n)`` joins
        the pieces buffered (a copy of each byte) and splits the one that crosses ``n`` (a copy
        of both halves), before the chunk is joined again: one copy is all a chunk needs.
        """
        if self._stream is None:
            data: bytes = await self._body.read(limit)
            return data
        while True:
            data, end_of_http_chunk = await self._stream.readchunk()
            if data or not end_of_http_chunk:  # a chunked answer marks its chunk ends with b""
                return data

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        """Chunks of at least ``chunk_size`` (the last one shorter, any one at most a socket
        read longer): the socket hands out a quarter of that or less, and every chunk costs a
        hash hand-off and a write downstream."""
        received, resumes = 0, 0
        pieces: list[bytes] = []
        held = 0
        while True:
            try:
                with self._errors(self.info.key):
                    chunk = await self._received(self._chunk_size - held)
            except Unavailable:
                resumes += 1
                if resumes >= self._retry.attempts:
                    raise
                await asyncio.sleep(self._retry.delay(resumes - 1))
                self.release()
                self._use(await self._resume(self.info, received))
                continue
            received += len(chunk)
            if chunk:
                pieces.append(chunk)
                held += len(chunk)
            if pieces and (held >= self._chunk_size or not chunk):
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces, held = [], 0
            if not chunk:
                return

    def release(self) -> None:
        """Close the HTTP response; an unfinished one cannot go back to the pool."""
        self._body.close()
