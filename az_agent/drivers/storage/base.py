"""The object-storage interface: the only thing the two zones share.

Every backend (S3, GCS, Azure Blob, a local directory) implements :class:`ObjectStore`, and one
contract test suite runs unchanged over all of them, so the lease, the commit log and the backups
can be written once against this interface.

Contract shared by every method:

* Keys are ``/``-separated relative paths; the configured bucket prefix is applied by
  :class:`~az_agent.drivers.storage.prefixed.PrefixedObjectStore`, not by the drivers.
* Errors are those of :mod:`az_agent.drivers.errors`; transient failures are retried inside the
  driver with full-jitter backoff and surface as ``Unavailable`` only when the attempts run out.
* Every object written through :meth:`ObjectStore.put` records the SHA-256 of its bytes in the
  object's metadata; readers verify it and raise ``CorruptObject`` on mismatch.
* A retried conditional write may report ``PreconditionFailed`` for a write that did land (the
  first response was lost). Callers that must know put a nonce in the body and re-read.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime

from az_agent.drivers.errors import CorruptObject, PreconditionFailed
from az_agent.drivers.resource import AsyncResource

GET_ATTEMPTS = 5
"""Whole-object reads started again when the object is replaced under them."""

Body = bytes | AsyncIterable[bytes]
"""What :meth:`ObjectStore.put` accepts: whole bytes, or a stream of unknown length."""

SHA256_METADATA_KEY = "az-sha256"
"""Name of the user-metadata entry carrying the hex SHA-256 of an object's bytes."""

DEFAULT_CHUNK_SIZE = 1 << 20

HASH_IN_THREAD_BYTES = 64 << 10
"""Chunks read from this size are hashed in a thread, off the event loop; smaller ones (leases,
log entries) cost less than the hand-off."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store knows about one stored object.

    ``version`` is the backend's opaque version token used for compare-and-swap (S3 ETag, GCS
    generation, Azure ETag, the SHA-256 for ``file``). On S3 identical bytes keep the same
    ETag, so callers must not rely on content changing for CAS to be meaningful.
    """

    key: str
    size: int
    version: str
    sha256: str | None = None
    modified: datetime | None = None


class ObjectReader(abc.ABC):
    """A streamed read of one object; iterate it for chunks, in order, exactly once.

    The SHA-256 recorded at write time is checked as the last chunk is handed out: a corrupted
    object raises ``CorruptObject`` instead of ending normally, so a consumer that streams the
    bytes elsewhere must treat the error as "discard what you received".
    """

    info: ObjectInfo

    @abc.abstractmethod
    def _raw_chunks(self) -> AsyncIterator[bytes]:
        """The object's bytes as the backend delivers them, without verification."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Chunks from :attr:`HASH_IN_THREAD_BYTES` are hashed in a thread (hashlib releases the
        GIL) while the consumer sends the chunk on: SHA-256 on the event loop took a quarter to
        a half of a rehydration's CPU there, serialised with every other transfer."""
        digest = hashlib.sha256()
        size = 0
        hashing: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()
        async for chunk in self._raw_chunks():
            size += len(chunk)
            if hashing is not None:
                await hashing  # updates stay in order
            if len(chunk) >= HASH_IN_THREAD_BYTES:
                hashing = loop.run_in_executor(None, digest.update, chunk)
            else:
                hashing = None
                digest.update(chunk)
            yield chunk
        if hashing is not None:
            await hashing
        verify_digest(self.info, digest.hexdigest(), size)

    async def read_all(self) -> bytes:
        """The whole object; only for small objects such as leases and log entries."""
        return b"".join([chunk async for chunk in self])


def verify_digest(info: ObjectInfo, sha256_hex: str, size: int) -> None:
    """Raise ``CorruptObject`` when bytes read disagree with what was recorded at write time."""
    if size != info.size:
        raise CorruptObject(f"{info.key}: read {size} bytes, the store says {info.size}")
    if info.sha256 is not None and info.sha256 != sha256_hex:
        raise CorruptObject(
            f"{info.key}: SHA-256 of the bytes read is {sha256_hex}, recorded {info.sha256}"
        )


class ObjectStore(AsyncResource):
    """A bucket (or container, or directory) of objects with conditional writes.

    Implementations are safe to share between tasks of one event loop. Use as an async context
    manager, or call :meth:`close` when done.
    """

    @abc.abstractmethod
    async def put(
        self,
        key: str,
        body: Body,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        """Write ``key`` and return its new info, including the new version token.

        ``body`` may be bytes or an async stream of unknown length; streams are uploaded in
        parts (multipart / blocks / resumable) so memory stays bounded whatever their size.
        ``if_none_match=True`` makes the write create-only; ``if_match=<version>`` makes it a
        compare-and-swap against that version. A lost condition raises ``PreconditionFailed``
        (also for ``if_match`` on a key that does not exist). The two are exclusive.
        Conditional writes are meant for small bodies (bytes).
        """

    @abc.abstractmethod
    def open(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AbstractAsyncContextManager[ObjectReader]:
        """Open ``key`` for a streamed, verified read; ``NotFound`` when it does not exist.

        The ``NotFound`` is raised on entering the context, before any byte is handed out.
        """

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo:
        """Info of ``key`` without its bytes; ``NotFound`` when it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, fetched page by page."""

    @abc.abstractmethod
    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete ``key``. Deleting a missing key is not an error unless ``if_match`` is given,
        in which case a missing key or another version raises ``PreconditionFailed``."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Probe the bucket at start-up: raise ``Misconfigured`` (missing bucket, bad
        credentials) or ``PermissionDenied`` with a message a human can act on."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""

    @property
    def write_spacing(self) -> float:
        """Seconds to leave between two writes of one object. GCS refuses more than about one
        a second per object (429); the others take them back to back, so a lease written
        twice in a row (a take-over, then its release) waits only where it must."""
        return 0.0

    async def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The whole verified object and its info; for small objects only.

        A read that meets the object replaced under it (``PreconditionFailed`` from the reader)
        starts again on the new version: a whole-object read has no earlier version to be
        loyal to, and records under compare-and-swap (lease, primary record) change often.
        """
        for attempt in range(GET_ATTEMPTS):
            try:
                async with self.open(key) as reader:
                    return await reader.read_all(), reader.info
            except PreconditionFailed:
                if attempt == GET_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")


def check_conditions(if_none_match: bool, if_match: str | None) -> None:
    """Reject the contradictory combination before any request is made."""
    if if_none_match and if_match is not None:
        raise ValueError("if_none_match and if_match are exclusive")
