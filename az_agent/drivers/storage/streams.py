"""Cutting an upload body into parts with bounded memory, and hashing it on the way."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from az_agent.drivers.storage.base import Body

DEFAULT_PART_SIZE = 8 << 20
"""8 MiB: above S3's 5 MiB minimum part size, small enough to keep memory flat."""


@dataclass
class BodyDigest:
    """Running SHA-256 and size of everything handed out by :func:`iter_parts`."""

    size: int = 0
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256)

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


async def _as_stream(body: Body) -> AsyncIterator[bytes]:
    if isinstance(body, bytes | bytearray | memoryview):
        yield bytes(body)
        return
    async for chunk in body:
        yield chunk


async def iter_parts(
    body: Body, part_size: int, digest: BodyDigest | None = None
) -> AsyncIterator[bytes]:
    """Yield ``body`` as parts of exactly ``part_size`` bytes, the last one shorter.

    At most one part plus one incoming chunk is held at a time. An empty body yields one empty
    part, so callers always have something to write.
    """
    buffer = bytearray()
    emitted = False
    async for chunk in _as_stream(body):
        if digest is not None:
            digest.update(chunk)
        buffer += chunk
        while len(buffer) >= part_size:
            part = bytes(buffer[:part_size])
            del buffer[:part_size]
            emitted = True
            yield part
    if buffer or not emitted:
        yield bytes(buffer)


async def first_part(
    body: Body, part_size: int, digest: BodyDigest
) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """Split off the first part; the iterator is ``None`` when the body fits in one part.

    Drivers use this to send small bodies as one simple request (with the checksum in its
    metadata) and larger ones as a multipart upload.
    """
    parts = iter_parts(body, part_size, digest)
    head = await anext(parts)
    try:
        second = await anext(parts)
    except StopAsyncIteration:
        return head, None

    async def rest() -> AsyncIterator[bytes]:
        yield second
        async for part in parts:
            yield part

    return head, rest()


async def aiter_bytes(data: bytes, chunk_size: int) -> AsyncIterable[bytes]:
    """Serve ``data`` as a stream of ``chunk_size`` pieces (tests and small adapters)."""
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]
