"""Resumable uploads for the ``gcs`` driver: a stream of unknown length sent in parts.

gcloud-aio-storage cannot upload a stream whose length is known only at its end, so the driver
opens a resumable session itself and sends each part with a ``Content-Range``; the last part
names the total. The server may keep only a prefix of a part (the ``Range`` of its 308), and after
a failure that may have landed bytes a status query (``bytes */*``) says where to go on from.
The requests go through :class:`UploadClient` (the store), so they share its session, token,
retry policy and error translation; this module needs nothing else of the driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

import aiohttp

from az_agent.drivers.errors import DriverError, Unavailable
from az_agent.drivers.storage.retry import RetryPolicy
from az_agent.drivers.storage.streams import PartReader

CONTENT_TYPE = "application/octet-stream"
_SEND_PIECE = 1 << 20  # the part is handed to aiohttp in views of this size, never copied

Missing = Literal["object", "bucket", "session"]
"""What a 404 means for the request at hand."""


class UploadClient(Protocol):
    """What an upload needs of the store (:class:`~az_agent.drivers.storage.gcs.GcsObjectStore`)."""

    retry: RetryPolicy
    emulated: bool

    def translated(
        self, what: str, *, missing: Missing = "object", auth: bool = False
    ) -> AbstractContextManager[None]:
        """Turn the failures of the requests inside into our errors."""
        ...

    async def send(
        self, method: str, url: str, *, headers: Mapping[str, str], **kwargs: Any
    ) -> aiohttp.ClientResponse:
        """A direct JSON-API request; an error status raises as gcloud-aio raises it."""
        ...


class _Slices:
    """A part handed to aiohttp as views: no copy, and no 'large raw bytes' warning."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._offset = 0

    def __aiter__(self) -> _Slices:
        return self

    async def __anext__(self) -> memoryview:
        if self._offset >= len(self._view):
            raise StopAsyncIteration
        piece = self._view[self._offset : self._offset + _SEND_PIECE]
        self._offset += len(piece)
        return piece


def _persisted(range_header: str | None) -> int:
    """Bytes a resumable session holds, from a 308's ``Range: bytes=0-N`` (absent: none)."""
    if not range_header:
        return 0
    return int(range_header.rpartition("-")[2]) + 1


class ResumableUpload:
    """One resumable upload session; ``persisted`` counts the bytes the server confirmed."""

    def __init__(self, store: UploadClient, key: str, uri: str) -> None:
        self._store = store
        self._key = key
        self._uri = uri
        self._in_doubt = False
        self.persisted = 0

    @classmethod
    async def start(
        cls, store: UploadClient, url: str, key: str, generation: str | None
    ) -> ResumableUpload:
        """Open a session at the upload ``url`` of the bucket, for ``key`` at ``generation``."""
        uri = await store.retry.run(
            f"gcs start upload {key}", lambda: _start_session(store, url, key, generation)
        )
        return cls(store, key, uri)

    async def write_all(self, reader: PartReader, part: bytearray) -> dict[str, Any]:
        """Send ``part`` (full, as ``reader`` filled it) and the rest of ``reader`` through the
        one buffer; the stored object."""
        filled = len(part)
        while True:
            last = not await reader.has_more()
            obj = await self.write(memoryview(part)[:filled], last=last)
            if last:
                break
            filled = await reader.fill(part)
        if obj is None:
            raise DriverError(f"gcs upload {self._key}: the server did not finalize the object")
        return obj

    async def write(self, part: memoryview, *, last: bool) -> dict[str, Any] | None:
        """Send ``part``, which starts at ``persisted``; the stored object once ``last`` lands."""
        start = self.persisted
        end = start + len(part)
        total = end if last else None
        while True:
            before = self.persisted
            obj = await self._store.retry.run(
                f"gcs upload {self._key}", lambda: self._attempt(part, start, total)
            )
            if obj is not None or (not last and self.persisted >= end):
                return obj
            if self.persisted <= before:
                raise DriverError(f"gcs upload {self._key}: the server accepts no more bytes")
            # The server kept a prefix only: the loop sends the rest of the part.

    async def _attempt(
        self, part: memoryview, start: int, total: int | None
    ) -> dict[str, Any] | None:
        if self._in_doubt:
            obj = await self._put(memoryview(b""), "bytes */*")
            if obj is not None:
                return obj
            self._in_doubt = False
        if self.persisted < start:
            raise DriverError(f"gcs upload {self._key}: the server lost confirmed bytes")
        piece = part[self.persisted - start :]
        size = "*" if total is None else str(total)
        if piece:
            content_range = f"bytes {self.persisted}-{self.persisted + len(piece) - 1}/{size}"
        elif total is None:
            return None  # the server has all of this part already
        else:
            content_range = f"bytes */{size}"
        try:
            return await self._put(piece, content_range)
        except Unavailable:
            # Some bytes may have landed: real GCS says how many on a status query. fake-gcs
            # 1.54 would finalize on one, and its failures here never reached it anyway.
            self._in_doubt = not self._store.emulated
            raise

    async def _put(self, piece: memoryview, content_range: str) -> dict[str, Any] | None:
        headers = {
            "Content-Range": content_range,
            "Content-Type": CONTENT_TYPE,
            "Content-Length": str(len(piece)),
        }
        data = _Slices(piece) if piece else b""
        with self._store.translated(f"upload {self._key}", missing="session"):
            response = await self._store.send("PUT", self._uri, data=data, headers=headers)
            async with response:
                if response.status == 308:
                    self.persisted = _persisted(response.headers.get("Range"))
                    await response.read()
                    return None
                obj: dict[str, Any] = await response.json(content_type=None)
                return obj


async def _start_session(store: UploadClient, url: str, key: str, generation: str | None) -> str:
    params = {"uploadType": "resumable", "name": key}
    if generation is not None:
        params["ifGenerationMatch"] = generation
    with store.translated(f"put {key}", missing="bucket"):
        response = await store.send(
            "POST",
            url,
            params=params,
            json={"name": key, "contentType": CONTENT_TYPE},
            headers={"X-Upload-Content-Type": CONTENT_TYPE},
        )
        async with response:
            await response.read()
    location = response.headers.get("Location")
    if not location:
        raise DriverError(f"gcs put {key}: no resumable session in the answer")
    return location


__all__ = ["CONTENT_TYPE", "Missing", "ResumableUpload", "UploadClient"]
