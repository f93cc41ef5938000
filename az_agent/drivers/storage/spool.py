"""A sized upload body spooled to an anonymous temporary file, hashed on the way in.

S3 takes an object's user metadata (where its SHA-256 is recorded) only when an upload starts.
A streamed multipart upload knows the digest only at its end, so it must then copy the object
onto itself to record it: a second server-side pass over every byte (on moto, a full rewrite).
A body written to disk first is hashed as it lands; its upload then starts with the digest in
hand and its parts are read back from the file, several at a time.

The file is unlinked from the start (``tempfile.TemporaryFile``), so nothing is left behind on
any path, a crash included; a byte budget per store bounds the disk its spools take together,
and a body that does not fit is streamed as before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import io
import logging
import os
import tempfile
import zlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import BinaryIO

from az_agent.drivers.storage.streams import BodyDigest

log = logging.getLogger(__name__)

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
WRITE_BATCH = 1 << 20
"""Chunks are gathered to this size before a thread writes and hashes them: a hand-off per
download chunk (often 64 KiB) would cost more than it saves on the event loop."""


class SpoolBudget:
    """Bytes of temporary files a store may hold at once; a reservation never waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes if they fit now; whether they did."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class SpooledBody:
    """The bytes read from a body so far, in a temporary file, with their digest.

    ``complete`` is false when the body outgrew the budget: the rest is still in the source
    iterator, and :meth:`chunks` replays what was spooled so the upload can go on streamed.
    """

    def __init__(self, file: BinaryIO, digest: BodyDigest, tail: bytes | None) -> None:
        self._file = file
        self.digest = digest
        self._tail = tail
        self.complete = tail is None

    @property
    def size(self) -> int:
        return self.digest.size

    def _pread(self, offset: int, size: int) -> bytes:
        pieces: list[bytes] = []
        while size > 0:
            piece = os.pread(self._file.fileno(), size, offset)
            if not piece:
                raise OSError(f"spool file ends {size} bytes early")
            pieces.append(piece)
            offset, size = offset + len(piece), size - len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def read_part(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset``, read in a thread."""
        return await asyncio.to_thread(self._pread, offset, size)

    async def read_into(self, buffer: io.BytesIO, offset: int, size: int) -> str:
        """Make ``buffer`` the ``size`` bytes from ``offset``; their CRC32, big-endian in
        base64 (a part's ``x-amz-checksum-crc32``). Read in a thread, but the buffer is sized
        here, on the loop's thread: grown in a worker, its bytes came from that thread's malloc
        arena, which kept them after the part was sent (a 256 MiB backup peaked 26 MiB
        higher)."""
        if buffer.seek(0, io.SEEK_END) < size:
            buffer.seek(size - 1)
            buffer.write(b"\0")
        buffer.truncate(size)

        def read() -> str:
            with buffer.getbuffer() as view:
                filled = 0
                while filled < size:
                    got = os.preadv(self._file.fileno(), [view[filled:]], offset + filled)
                    if not got:
                        raise OSError(f"spool file ends {size - filled} bytes early")
                    filled += got
                crc32 = zlib.crc32(view)
            return base64.b64encode(crc32.to_bytes(4, "big")).decode()

        return await asyncio.to_thread(read)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Replay the bytes read so far, :data:`WRITE_BATCH` at a time (those held in memory
        when the budget ran out last)."""
        for offset in range(0, self.size, WRITE_BATCH):
            yield await asyncio.to_thread(self._pread, offset, min(WRITE_BATCH, self.size - offset))
        if self._tail:
            yield self._tail


def _temporary_file(directory: str | None) -> BinaryIO:
    """Unlinked at creation (``O_TMPFILE`` on Linux): the kernel frees it with the last handle."""
    return tempfile.TemporaryFile(dir=directory or None)


def _write(file: BinaryIO, digest: BodyDigest, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(file.fileno(), view) :]
    digest.update(memoryview(data))


async def _fill(
    file: BinaryIO, source: AsyncIterator[bytes], budget: SpoolBudget, reserved: list[int]
) -> SpooledBody:
    """Write ``source`` to ``file`` in batches, one batch in a thread while the next gathers;
    stops early, what was not written kept in memory, when the body outgrows ``reserved[0]``
    and the budget, or when the disk is full (the upload then goes on streamed instead of
    failing until someone frees the disk)."""
    digest = BodyDigest()
    batch = bytearray()
    written = 0
    writing: asyncio.Future[None] | None = None
    in_flight = bytearray()  # the batch being written, kept until its write is done
    complete = True
    try:
        while True:
            chunk = await anext(source, None)
            if chunk is not None:
                batch += chunk
                if len(batch) < WRITE_BATCH:
                    continue
            if written + len(batch) > reserved[0]:
                extra = written + len(batch) - reserved[0]
                if not budget.take(extra):
                    complete = False
                    break
                reserved[0] += extra
            if writing is not None and not await _written(writing, digest):
                writing = None
                complete, batch = False, in_flight + batch
                break
            if batch:
                writing = asyncio.ensure_future(asyncio.to_thread(_write, file, digest, batch))
                written += len(batch)
                in_flight, batch = batch, bytearray()
            if chunk is None:
                break
    finally:
        if writing is not None:
            await asyncio.wait([writing])  # the file outlives no write
    if writing is not None and not await _written(writing, digest):
        complete, batch = False, in_flight + batch
    return SpooledBody(file, digest, None if complete else bytes(batch))


async def _written(writing: asyncio.Future[None], digest: BodyDigest) -> bool:
    """Whether a batch's write went through; False when the disk is full (what it wrote is
    past ``digest.size``, which counts only whole batches, so it is never replayed)."""
    try:
        await writing
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        log.warning("spool disk full after %d bytes: the rest of the body is streamed", digest.size)
        return False
    return True


@contextlib.asynccontextmanager
async def _spooled(
    source: AsyncIterator[bytes], size: int, directory: str | None, budget: SpoolBudget
) -> AsyncIterator[SpooledBody | None]:
    if not budget.take(size):
        yield None
        return
    reserved = [size]
    try:
        file = await asyncio.to_thread(_temporary_file, directory)
        try:
            yield await _fill(file, source, budget, reserved)
        finally:
            await asyncio.to_thread(file.close)
    finally:
        budget.give(reserved[0])


def spooled(
    source: AsyncIterator[bytes], size: int, directory: str | None, budget: SpoolBudget
) -> AbstractAsyncContextManager[SpooledBody | None]:
    """``source`` (said to be ``size`` bytes) in a temporary file in ``directory`` (the
    system's temporary directory when ``None``) for the context's life; ``None``, with nothing
    read, when ``budget`` cannot take ``size`` bytes now."""
    return _spooled(source, size, directory, budget)
