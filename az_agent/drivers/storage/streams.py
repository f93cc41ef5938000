"""Cutting an upload body into parts with bounded memory, and hashing it on the way.

Every driver that uploads a stream in parts (S3 multipart, GCS resumable, Azure blocks, the
file store's temp file) cuts it with :class:`PartReader`, so the memory bound is proved once:
at most the current part plus one incoming chunk are alive.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import BinaryIO

from az_agent.drivers.storage.base import Body

DEFAULT_PART_SIZE = 8 << 20
"""8 MiB: above S3's 5 MiB minimum part size, small enough to keep memory flat."""


@dataclass
class BodyDigest:
    """Running SHA-256 and size of every byte a :class:`PartReader` pulled from its body."""

    size: int = 0
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256)

    def update(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


@dataclass(frozen=True, slots=True)
class SizedBody:
    """A stream whose length is known before it is read (a segment download's Content-Length).

    Every driver takes it as the stream it is; the S3 driver picks its upload by the size: one
    ``PutObject`` of the buffered body below its threshold, where a stream of unknown length
    must start a multipart upload once one part is read. A size that proves wrong costs only
    that choice: the bytes are what the stream yields.
    """

    chunks: AsyncIterable[bytes]
    size: int

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(self.chunks)


async def body_chunks(body: Body) -> AsyncIterator[bytes]:
    """``body`` as a stream of chunks, whether it is bytes or already a stream."""
    if isinstance(body, bytes | bytearray | memoryview):
        yield bytes(body)
        return
    async for chunk in body:
        yield chunk


class PartReader:
    """Cuts a body into parts, reading one chunk ahead so callers know when a part is the last.

    Two ways to take parts, by what the upload API needs:

    * :meth:`fill` copies the next bytes into a caller-owned buffer that can be reused for every
      part (one part of memory for the whole upload);
    * :meth:`advance` makes the next part of ``part_size`` bytes available as :attr:`part`
      (immutable bytes, for APIs that keep a reference while they retry).
    """

    def __init__(self, body: Body, part_size: int = DEFAULT_PART_SIZE) -> None:
        self._chunks = body_chunks(body)
        self._part_size = part_size
        self._pending = memoryview(b"")
        self._started = False
        self.part = b""
        self.digest = BodyDigest()

    async def has_more(self) -> bool:
        """Whether any byte is left; pulls (and hashes) the next chunk when needed."""
        while not self._pending:
            chunk = await anext(self._chunks, None)
            if chunk is None:
                return False
            self.digest.update(chunk)
            self._pending = memoryview(chunk)
        return True

    async def fill(self, part: bytearray) -> int:
        """Overwrite ``part`` from its start with the next bytes; how many (fewer at the end).

        The buffer is never resized, so views of it handed to earlier requests stay valid.
        """
        filled = 0
        while filled < len(part) and await self.has_more():
            take = self._pending[: len(part) - filled]
            part[filled : filled + len(take)] = take
            filled += len(take)
            self._pending = self._pending[len(take) :]
        return filled

    async def write_to(self, sink: BinaryIO, limit: int) -> int:
        """Move up to ``limit`` bytes into ``sink`` as they arrive, without building a part (a
        buffer growing in place holds them once); how many were moved."""
        self._started = True
        moved = 0
        while moved < limit and await self.has_more():
            piece = self._pending[: limit - moved]
            sink.write(piece)
            moved += len(piece)
            self._pending = self._pending[len(piece) :]
        return moved

    async def advance(self) -> bool:
        """Make the next part current in :attr:`part`; ``False`` once the body is used up.

        An empty body has one empty part, so callers always have something to write.
        """
        self.part = b""  # drop the previous part before building the next one
        pieces = await self.gather()
        if pieces is None:
            return False
        self.part = b"".join(pieces)
        return True

    async def gather(self) -> list[memoryview] | None:
        """The next part as views of the chunks read, not joined yet (``b"".join`` them), so a
        caller can wait for memory to free before the copy; ``None`` once the body is used up
        (an empty body has one empty part, as with :meth:`advance`)."""
        if self._started and not await self.has_more():
            return None
        self._started = True
        pieces: list[memoryview] = []
        size = 0
        while size < self._part_size and await self.has_more():
            piece = self._pending[: self._part_size - size]
            pieces.append(piece)
            size += len(piece)
            self._pending = self._pending[len(piece) :]
        return pieces


async def aiter_bytes(data: bytes, chunk_size: int) -> AsyncIterable[bytes]:
    """Serve ``data`` as a stream of ``chunk_size`` pieces (tests and small adapters)."""
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]
