"""Writes for the ``s3`` driver: each body sent the cheapest way that still lets the server
refuse altered bytes and leaves its SHA-256 recorded in user metadata.

* A body that fits in one part is one ``PutObject`` carrying its SHA-256 in user metadata and its
  condition (``If-None-Match: *`` / ``If-Match``). A larger body is a multipart upload whose
  condition sits on ``CompleteMultipartUpload``. A body of known size is spooled to a temporary
  file first (:mod:`~az_agent.drivers.storage.spool`), so its SHA-256 goes in at
  ``CreateMultipartUpload`` and its parts are sent from the file several at a time. A stream of
  unknown length (a dump), or one the spool budget cannot hold, learns its SHA-256 only at the
  end: it is then attached by a server-side copy of the object onto itself, guarded by
  ``x-amz-copy-source-if-match`` (a multipart copy above S3's 5 GiB single-copy limit).
* A single ``PutObject`` carries the SHA-256 it records as ``x-amz-checksum-sha256`` (S3 and
  SeaweedFS refuse a body that does not match it); each part of a spooled body its CRC32 (a fifth
  of an MD5's CPU, refused on mismatch as well), each part of a streamed one its ``Content-MD5``.

Apart from the store so that it reads as its interface; the requests go through the store's own
(:class:`S3Request`), sharing its client, retry policy and error translation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from az_agent.drivers.errors import DriverError, Misconfigured, PreconditionFailed, Unavailable
from az_agent.drivers.storage.base import SHA256_METADATA_KEY, Body, ObjectInfo
from az_agent.drivers.storage.memory_budget import MemoryBudget
from az_agent.drivers.storage.spool import SpoolBudget, SpooledBody, spooled
from az_agent.drivers.storage.streams import BodyDigest, PartReader, SizedBody

log = logging.getLogger(__name__)

MAX_PARTS = 10_000
SINGLE_COPY_LIMIT = 5 << 30
"""Largest object ``CopyObject`` accepts; above it the checksum is attached by a multipart copy."""
COPY_PART_SIZE = 512 << 20
SINGLE_PUT_LIMIT = 24 << 20
"""A :class:`SizedBody` up to this size is buffered and sent as one ``PutObject``."""
PARTS_IN_FLIGHT = 1
"""Parts of one multipart upload sent while the next is read: one keeps the source flowing
during each upload within two parts of memory (the contract's bound for a streamed put)."""
SPOOLED_PARTS_IN_FLIGHT = 2
"""Parts of a spooled body sent at once, each read from the file (and its CRC32 taken) in a
thread into a buffer of its own, held within the store's memory budget until it is sent."""
MD5_IN_THREAD_BYTES = 1 << 20
"""Bodies from this size get their MD5 in a thread (hashlib releases the GIL), off the loop
(not base.HASH_IN_THREAD_BYTES, the threshold for a read's SHA-256 chunks)."""


class S3Request(Protocol):
    """One S3 request, translated and retried on ``Unavailable`` (the store's ``_call``)."""

    async def __call__(
        self,
        subject: str,
        operation: str,
        body: bytes | RequestBuffer | None = None,
        /,
        **params: Any,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class S3Uploader:
    """Puts into one bucket, with the store's settings as they were when the put began."""

    call: S3Request
    head: Callable[[str], Awaitable[ObjectInfo]]
    bucket: str
    part_size: int
    single_copy_limit: int
    spool_dir: str | None
    spool_budget: SpoolBudget | None
    memory: MemoryBudget

    async def put(self, key: str, body: Body, condition: dict[str, str]) -> ObjectInfo:
        """Store ``body`` under ``key`` if ``condition`` (``IfNoneMatch`` / ``IfMatch``) holds."""
        if isinstance(body, SizedBody) and body.size <= SINGLE_PUT_LIMIT:
            return await self._put_buffered(key, body, condition)
        if isinstance(body, SizedBody) and self.spool_budget is not None:
            return await self._put_spooled(key, body, self.spool_budget, condition)
        return await self._put_streamed(key, body, condition)

    async def _put_buffered(
        self, key: str, body: SizedBody, condition: dict[str, str]
    ) -> ObjectInfo:
        """A body that says it fits in one ``PutObject``, built in place as it is read, within
        the store's memory budget (longer than it said, it goes on in parts under the same
        hold: rare, and asking for more while holding could deadlock)."""
        async with self.memory.holding(body.size):
            reader = PartReader(body, SINGLE_PUT_LIMIT)
            buffer = RequestBuffer()
            await reader.write_to(buffer, SINGLE_PUT_LIMIT)
            if not await reader.has_more():
                return await self._put_single(key, reader.digest, buffer, condition)
            head = [buffer.getvalue()]  # longer than it said: rare, a copy is fine
            del buffer
            return await self._put_multipart(key, reader, head, condition)

    async def _put_streamed(self, key: str, body: Body, condition: dict[str, str]) -> ObjectInfo:
        """A body of unknown length: one ``PutObject`` if it ends within a part, else parts
        sent as they are read and the SHA-256 attached afterwards; the parts it holds at most
        (one sent, the next read) are taken from the memory budget at once."""
        async with self.memory.holding((PARTS_IN_FLIGHT + 1) * self.part_size):
            reader = PartReader(body, self.part_size)
            await reader.advance()
            head = [reader.part]
            reader.part = b""
            if not await reader.has_more():
                return await self._put_single(key, reader.digest, head[0], condition)
            return await self._put_multipart(key, reader, head, condition)

    async def _put_single(
        self, key: str, digest: BodyDigest, body: bytes | RequestBuffer, condition: dict[str, str]
    ) -> ObjectInfo:
        """One ``PutObject``: below the threshold a multipart upload's three extra requests and
        the copy that records the SHA-256 cost more than overlapping its parts gains.

        The SHA-256 already computed goes as the request's checksum, so the server refuses a
        body cut short or altered on the way (see :func:`content_md5`) without a second hash
        of every byte for ``Content-MD5``."""
        sha256 = digest.hexdigest()
        metadata = {SHA256_METADATA_KEY: sha256}
        reply = await self.call(
            key,
            "put_object",
            body,
            Key=key,
            Metadata=metadata,
            ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
            **condition,
        )
        return ObjectInfo(key, digest.size, reply["ETag"], sha256)

    async def _put_spooled(
        self, key: str, body: SizedBody, budget: SpoolBudget, condition: dict[str, str]
    ) -> ObjectInfo:
        """Spool ``body``, then upload it with its SHA-256 known from the start; streamed as
        before when the budget has no room for it, or from where it outgrew its room."""
        source = aiter(body)
        try:
            async with spooled(source, body.size, self.spool_dir, budget) as spool:
                if spool is None:
                    return await self._put_streamed(key, source, condition)
                if not spool.complete:
                    return await self._put_streamed(key, _chain(spool.chunks(), source), condition)
                return await self._put_from_spool(key, spool, condition)
        except OSError as exc:  # the requests' own are translated: this is the temporary file
            raise Unavailable(f"{key}: could not spool the body: {exc}") from exc

    async def _put_from_spool(
        self, key: str, spool: SpooledBody, condition: dict[str, str]
    ) -> ObjectInfo:
        sha256 = spool.digest.hexdigest()
        if spool.size <= self.part_size:  # shorter than it said
            data = await spool.read_part(0, spool.size)
            return await self._put_single(key, spool.digest, data, condition)
        metadata = {SHA256_METADATA_KEY: sha256}
        created = await self.call(
            key, "create_multipart_upload", Key=key, Metadata=metadata, ChecksumAlgorithm="CRC32"
        )
        upload_id: str = created["UploadId"]
        try:
            parts = await self._upload_spooled_parts(key, upload_id, spool)
            done = await self._complete(key, upload_id, parts, condition)
        except BaseException:
            await _shielded(self._abort(key, upload_id))
            raise
        return ObjectInfo(key, spool.size, _quoted(done["ETag"]), sha256)

    async def _upload_spooled_parts(
        self, key: str, upload_id: str, spool: SpooledBody
    ) -> list[dict[str, Any]]:
        """:data:`SPOOLED_PARTS_IN_FLIGHT` parts at a time, in parts large enough to stay
        within :data:`MAX_PARTS`, each with its CRC32 (declared at the upload's creation, listed
        again at its completion, as S3 requires); the first failure cancels the others."""
        part_size = max(self.part_size, -(-spool.size // MAX_PARTS))
        parts: dict[int, dict[str, Any]] = {}
        slots = asyncio.Semaphore(SPOOLED_PARTS_IN_FLIGHT)

        async def send(number: int, offset: int) -> None:
            size = min(part_size, spool.size - offset)
            try:
                async with self.memory.holding(size):
                    buffer = RequestBuffer()
                    crc32 = await spool.read_into(buffer, offset, size)
                    reply = await self.call(
                        key,
                        "upload_part",
                        buffer,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        ChecksumCRC32=crc32,
                    )
                    del buffer  # its bytes go while the budget still counts them
            finally:
                slots.release()
            parts[number] = {"PartNumber": number, "ETag": reply["ETag"], "ChecksumCRC32": crc32}

        try:
            async with asyncio.TaskGroup() as sending:
                for number, offset in enumerate(range(0, spool.size, part_size), 1):
                    await slots.acquire()
                    sending.create_task(send(number, offset), name=f"part {number} of {key}")
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        return [parts[n] for n in sorted(parts)]

    async def _put_multipart(
        self, key: str, reader: PartReader, head: list[bytes], condition: dict[str, str]
    ) -> ObjectInfo:
        upload_id: str = (await self.call(key, "create_multipart_upload", Key=key))["UploadId"]
        try:
            parts = await self._upload_parts(key, upload_id, reader, head)
            done = await self._complete(key, upload_id, parts, condition)
        except BaseException:
            await _shielded(self._abort(key, upload_id))
            raise
        return await self._attach_digest(key, done["ETag"], reader.digest)

    async def _upload_parts(
        self, key: str, upload_id: str, reader: PartReader, head: list[bytes]
    ) -> list[dict[str, Any]]:
        """Up to :data:`PARTS_IN_FLIGHT` parts upload at once while the next one is read, so
        memory holds at most that many parts plus one; the first failure cancels the others."""
        etags: dict[int, str] = {}
        slots = asyncio.Semaphore(PARTS_IN_FLIGHT)
        try:
            async with asyncio.TaskGroup() as sending:
                number = 0
                while pieces := await self._next_part(reader, head):
                    number += 1
                    if number > MAX_PARTS:
                        raise Misconfigured(
                            f"{key}: more than {MAX_PARTS} parts of {self.part_size >> 20} "
                            "MiB; raise partSizeMib to store objects this large"
                        )
                    await slots.acquire()  # the part sent before is released: copy this one
                    part = b"".join(pieces)
                    del pieces
                    sent = self._send_part(key, upload_id, number, part, etags, slots)
                    sending.create_task(sent, name=f"part {number} of {key}")
                    del part, sent  # only the task holds the part now
        except BaseExceptionGroup as group:  # our callers expect our errors, not a group
            raise _first_error(group) from None
        return [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]

    async def _send_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        part: bytes,
        etags: dict[int, str],
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            reply = await self.call(
                key,
                "upload_part",
                part,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                ContentMD5=await content_md5(part),
            )
            etags[number] = reply["ETag"]
        finally:
            slots.release()

    @staticmethod
    async def _next_part(reader: PartReader, head: list[bytes]) -> list[bytes | memoryview]:
        """The next part's pieces: ``head`` first, then the body; empty at the end (a body
        that was split holds no empty part)."""
        if head:
            return [head.pop(0)]
        return list(await reader.gather() or ())

    async def _complete(
        self, key: str, upload_id: str, parts: list[dict[str, Any]], condition: dict[str, str]
    ) -> dict[str, Any]:
        return await self.call(
            key,
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            **condition,
        )

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self.call(key, "abort_multipart_upload", Key=key, UploadId=upload_id)
        except DriverError as exc:  # the original failure matters more; S3 lifecycle rules GC
            log.warning("could not abort multipart upload of %s: %s", key, exc)

    async def _attach_digest(self, key: str, etag: str, digest: BodyDigest) -> ObjectInfo:
        """Record the SHA-256 by copying the object onto itself, unless it was replaced since."""
        metadata = {SHA256_METADATA_KEY: digest.hexdigest()}
        try:
            if digest.size > self.single_copy_limit:
                version = await self._copy_in_parts(key, etag, digest.size, metadata)
            else:
                reply = await self.call(
                    key,
                    "copy_object",
                    Key=key,
                    CopySource={"Bucket": self.bucket, "Key": key},
                    CopySourceIfMatch=etag,
                    MetadataDirective="REPLACE",
                    Metadata=metadata,
                )
                version = _quoted(reply["CopyObjectResult"]["ETag"])
        except PreconditionFailed:
            current = await self.head(key)
            if current.sha256 == digest.hexdigest():  # our copy landed, its reply was lost
                return current
            log.info("%s was overwritten before its checksum was recorded", key)
            return ObjectInfo(key, digest.size, etag, digest.hexdigest())
        return ObjectInfo(key, digest.size, version, digest.hexdigest())

    async def _copy_in_parts(self, key: str, etag: str, size: int, metadata: dict[str, str]) -> str:
        created = await self.call(key, "create_multipart_upload", Key=key, Metadata=metadata)
        upload_id: str = created["UploadId"]
        source = {"Bucket": self.bucket, "Key": key}
        step = min(COPY_PART_SIZE, self.single_copy_limit)
        try:
            parts: list[dict[str, Any]] = []
            for number, start in enumerate(range(0, size, step), 1):
                end = min(start + step, size) - 1
                reply = await self.call(
                    key,
                    "upload_part_copy",
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceIfMatch=etag,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": reply["CopyPartResult"]["ETag"]})
            done = await self._complete(key, upload_id, parts, {"IfMatch": etag})
        except BaseException:
            await _shielded(self._abort(key, upload_id))
            raise
        version: str = done["ETag"]
        return version


async def _chain(*streams: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for stream in streams:
        async for chunk in stream:
            yield chunk


def _quoted(etag: str) -> str:
    """An ETag in the quoted form HEAD, GET and LIST give: SeaweedFS leaves CopyObject's bare."""
    return etag if etag.startswith('"') else f'"{etag}"'


class RequestBuffer(io.BytesIO):
    """A request body built in place as the source is read (its growth is a ``realloc``, not
    a copy), so a single PUT holds its bytes once; aiohttp closes what it sent, so ``close``
    waits for the garbage collector instead and a retry can send it again."""

    def close(self) -> None:
        pass


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that failed a group of part uploads (the others were cancelled by it)."""
    errors = [e for e in group.exceptions if not isinstance(e, asyncio.CancelledError)]
    first = (errors or list(group.exceptions))[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


async def _shielded(cleanup: Awaitable[None]) -> None:
    """Run ``cleanup`` to its end even if our caller is cancelled meanwhile."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


async def content_md5(body: bytes | memoryview | io.BytesIO) -> str:
    """The ``Content-MD5`` of ``body``: the server refuses a body that arrives short or altered.

    Real S3 also refuses a body shorter than its ``Content-Length``; some S3-compatible servers
    (SeaweedFS) store it instead, as an empty or truncated object under the metadata of the
    headers, so a request cut by a dropped connection could leave a create-only key taken by
    garbage. With the digest they answer ``BadDigest`` and store nothing.
    """
    if isinstance(body, io.BytesIO):
        with body.getbuffer() as view:  # released before the body is read or written again
            return await content_md5(view)
    if len(body) >= MD5_IN_THREAD_BYTES:
        digest = await asyncio.to_thread(lambda: hashlib.md5(body, usedforsecurity=False).digest())
    else:
        digest = hashlib.md5(body, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()
