"""Amazon S3 and S3-compatible stores as an :class:`ObjectStore`, through aiobotocore.

Choices that are not obvious from the interface:

* botocore's own retries are off, so our :class:`RetryPolicy` (full jitter) is the only one and
  attempts do not multiply; every vendor error goes through :func:`translate_error`.
* A body that fits in one part is one ``PutObject`` carrying its SHA-256 in user metadata and its
  condition (``If-None-Match: *`` / ``If-Match``). A larger body is a multipart upload whose
  condition sits on ``CompleteMultipartUpload``. A body of known size is spooled to a temporary
  file first (:mod:`~az_agent.drivers.storage.spool`), so its SHA-256 goes in at
  ``CreateMultipartUpload`` and its parts are sent from the file several at a time. A stream of
  unknown length (a dump), or one the spool budget cannot hold, learns its SHA-256 only at the
  end: it is then attached by a server-side copy of the object onto itself, guarded by
  ``x-amz-copy-source-if-match`` (a multipart copy above S3's 5 GiB single-copy limit).
* Request checksums are sent only when an operation requires them: S3-compatible stores often
  reject botocore's default CRC trailers, and we verify SHA-256 end to end ourselves. A single
  ``PutObject`` carries the SHA-256 it records as ``x-amz-checksum-sha256`` (S3 and SeaweedFS
  refuse a body that does not match it); each part of a spooled body its CRC32 (a fifth of an
  MD5's CPU, refused on mismatch as well), each part of a streamed one its ``Content-MD5``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import exceptions as boto

from az_agent.drivers.errors import (
    DriverError,
    Misconfigured,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from az_agent.drivers.storage.base import (
    DEFAULT_CHUNK_SIZE,
    SHA256_METADATA_KEY,
    Body,
    ObjectInfo,
    ObjectReader,
    ObjectStore,
    check_conditions,
)
from az_agent.drivers.storage.config import CloudStorageSettings, StorageSecrets
from az_agent.drivers.storage.keys import validate_key
from az_agent.drivers.storage.retry import RetryPolicy
from az_agent.drivers.storage.s3_small import SmallObjectGetter, verify_whole
from az_agent.drivers.storage.spool import SpoolBudget, SpooledBody, spooled
from az_agent.drivers.storage.streams import BodyDigest, PartReader, SizedBody

log = logging.getLogger(__name__)

MAX_PARTS = 10_000
SINGLE_COPY_LIMIT = 5 << 30
"""Largest object ``CopyObject`` accepts; above it the checksum is attached by a multipart copy."""
COPY_PART_SIZE = 512 << 20
MAX_POOL_CONNECTIONS = 64
SINGLE_PUT_LIMIT = 24 << 20
"""A :class:`SizedBody` up to this size is buffered and sent as one ``PutObject``."""
PARTS_IN_FLIGHT = 1
"""Parts of one multipart upload sent while the next is read: one keeps the source flowing
during each upload within two parts of memory (the contract's bound for a streamed put)."""
SPOOLED_PARTS_IN_FLIGHT = 2
"""Parts of a spooled body sent at once, each read from the file (and its MD5 taken) in a
thread into a buffer of its own: two parts of memory per upload, as a streamed one holds."""

# fmt: off
_UNAVAILABLE_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "OperationAborted",
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException",
    "BandwidthLimitExceeded",
})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_BUCKET_CODES = frozenset({"NoSuchBucket", "InvalidBucketName", "PermanentRedirect", "301"})
_CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "TokenRefreshRequired", "AuthorizationHeaderMalformed", "RequestTimeTooSkewed",
})
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
_TRANSIENT = (
    boto.HTTPClientError, boto.ConnectionError, boto.IncompleteReadError, aiohttp.ClientError,
    OSError,
)
_CREDENTIAL_ERRORS = (
    boto.NoCredentialsError, boto.PartialCredentialsError, boto.CredentialRetrievalError,
)
# fmt: on
_VENDOR = (boto.ClientError, boto.BotoCoreError, aiohttp.ClientError, OSError)


def translate_error(exc: BaseException, subject: str, bucket: str) -> DriverError:
    """Our error for a botocore/aiohttp one; messages never carry credentials."""
    if isinstance(exc, boto.ClientError):
        return _from_client_error(exc, subject, bucket)
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return Misconfigured(f"{subject}: no usable S3 credentials ({type(exc).__name__})")
    if isinstance(exc, boto.SSLError):
        return Misconfigured(f"{subject}: TLS failure talking to S3: {exc}")
    if isinstance(exc, _TRANSIENT):
        return Unavailable(f"{subject}: {type(exc).__name__}: {exc}")
    return DriverError(f"{subject}: {type(exc).__name__}: {exc}")


def _from_client_error(exc: boto.ClientError, subject: str, bucket: str) -> DriverError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    detail = f"{subject}: {code or status}: {error.get('Message') or 'no message'}"
    if code in _UNAVAILABLE_CODES or status in (429, 500, 502, 503, 504):
        return Unavailable(detail)
    if code in _PRECONDITION_CODES or status == 412:
        return PreconditionFailed(detail)
    if code in _BUCKET_CODES:
        return Misconfigured(f"s3 bucket {bucket!r} does not exist or is elsewhere ({detail})")
    if code in _CREDENTIAL_CODES:
        return Misconfigured(f"S3 rejected the credentials or the request signature ({detail})")
    if code in _NOT_FOUND_CODES or status == 404:
        return NotFound(detail)
    if code in _DENIED_CODES or status == 403:
        return PermissionDenied(detail)
    return DriverError(detail)


@contextlib.contextmanager
def _vendor_errors(subject: str, bucket: str) -> Iterator[None]:
    try:
        yield
    except _VENDOR as exc:
        raise translate_error(exc, subject, bucket) from exc


def _payload_stream(body: Any) -> aiohttp.StreamReader | None:
    """The aiohttp stream under an aiobotocore body, ``None`` if this aiobotocore hides it."""
    stream = getattr(getattr(body, "_raw_stream", None), "content", None)
    return stream if isinstance(stream, aiohttp.StreamReader) else None


class _S3Reader(ObjectReader):
    """Streams a ``GetObject`` body; a connection lost mid-read resumes with a ranged GET."""

    def __init__(self, store: S3ObjectStore, info: ObjectInfo, body: Any, chunk_size: int) -> None:
        self._store = store
        self.info = info
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
                with self._store._errors(self.info.key):
                    chunk = await self._received(self._chunk_size - held)
            except Unavailable:
                resumes += 1
                if resumes >= self._store.retry.attempts:
                    raise
                await asyncio.sleep(self._store.retry.delay(resumes - 1))
                self.release()
                self._use(await self._store._resume(self.info, received))
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


class S3ObjectStore(ObjectStore):
    """One S3 bucket; see the module docstring for how writes and checksums work.

    ``single_copy_limit`` is S3's; tests lower it to exercise the multipart copy. Bodies of
    known size above :data:`SINGLE_PUT_LIMIT` are spooled in ``spool_dir`` (the system's
    temporary directory when ``None``) while ``spool_budget`` has room; without a budget they
    are streamed.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        retry: RetryPolicy,
        part_size: int,
        resources: AsyncExitStack | None = None,
        single_copy_limit: int = SINGLE_COPY_LIMIT,
        spool_dir: str | None = None,
        spool_budget: SpoolBudget | None = None,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self.retry = retry
        self._part_size = part_size
        self._resources = resources or AsyncExitStack()
        self.single_copy_limit = single_copy_limit
        self._small = SmallObjectGetter(client, bucket)
        self.spool_dir = spool_dir
        self.spool_budget = spool_budget

    def _errors(self, subject: str) -> contextlib.AbstractContextManager[None]:
        return _vendor_errors(subject, self._bucket)

    async def _call(
        self,
        subject: str,
        operation: str,
        body: bytes | _Buffer | None = None,
        /,
        **params: Any,
    ) -> dict[str, Any]:
        """One S3 request, translated and retried on ``Unavailable``.

        A body goes as a fresh ``BytesIO`` per attempt (it shares the bytes, no copy), or a
        :class:`_Buffer` rewound: a stream position left at the end by a failed attempt would
        send nothing, and aiohttp warns about large raw ``bytes``.
        """
        method = getattr(self._client, operation)

        async def attempt() -> dict[str, Any]:
            if isinstance(body, _Buffer):
                body.seek(0)
                params["Body"] = body
            elif body is not None:
                params["Body"] = io.BytesIO(body)
            with self._errors(f"s3://{self._bucket}/{subject}"):
                reply: dict[str, Any] = await method(Bucket=self._bucket, **params)
                return reply

        return await self.retry.run(f"s3 {operation} {subject}", attempt)

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        check_conditions(if_none_match, if_match)
        validate_key(key)
        condition = {"IfNoneMatch": "*"} if if_none_match else {}
        if if_match is not None:
            condition = {"IfMatch": if_match}
        try:
            if isinstance(body, SizedBody) and body.size <= SINGLE_PUT_LIMIT:
                return await self._put_buffered(key, body, condition)
            if isinstance(body, SizedBody) and self.spool_budget is not None:
                return await self._put_spooled(key, body, self.spool_budget, condition)
            return await self._put_streamed(key, body, condition)
        except NotFound as exc:
            if if_match is None:
                raise
            raise PreconditionFailed(f"{key}: does not exist, expected version {if_match}") from exc

    async def _put_buffered(
        self, key: str, body: SizedBody, condition: dict[str, str]
    ) -> ObjectInfo:
        """A body that says it fits in one ``PutObject``, built in place as it is read."""
        reader = PartReader(body, SINGLE_PUT_LIMIT)
        buffer = _Buffer()
        await reader.write_to(buffer, SINGLE_PUT_LIMIT)
        if not await reader.has_more():
            return await self._put_single(key, reader.digest, buffer, condition)
        head = [buffer.getvalue()]  # longer than it said: rare, a copy is fine
        del buffer
        return await self._put_multipart(key, reader, head, condition)

    async def _put_streamed(self, key: str, body: Body, condition: dict[str, str]) -> ObjectInfo:
        """A body of unknown length: one ``PutObject`` if it ends within a part, else parts
        sent as they are read and the SHA-256 attached afterwards."""
        reader = PartReader(body, self._part_size)
        await reader.advance()
        head = [reader.part]
        reader.part = b""
        if not await reader.has_more():
            return await self._put_single(key, reader.digest, head[0], condition)
        return await self._put_multipart(key, reader, head, condition)

    async def _put_single(
        self, key: str, digest: BodyDigest, body: bytes | _Buffer, condition: dict[str, str]
    ) -> ObjectInfo:
        """One ``PutObject``: below the threshold a multipart upload's three extra requests and
        the copy that records the SHA-256 cost more than overlapping its parts gains.

        The SHA-256 already computed goes as the request's checksum, so the server refuses a
        body cut short or altered on the way (see :func:`content_md5`) without a second hash
        of every byte for ``Content-MD5``."""
        sha256 = digest.hexdigest()
        metadata = {SHA256_METADATA_KEY: sha256}
        reply = await self._call(
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
        if spool.size <= self._part_size:  # shorter than it said
            data = await spool.read_part(0, spool.size)
            return await self._put_single(key, spool.digest, data, condition)
        metadata = {SHA256_METADATA_KEY: sha256}
        created = await self._call(
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
        part_size = max(self._part_size, -(-spool.size // MAX_PARTS))
        parts: dict[int, dict[str, Any]] = {}
        buffers: asyncio.Queue[_Buffer] = asyncio.Queue()
        for _ in range(SPOOLED_PARTS_IN_FLIGHT):
            buffers.put_nowait(_Buffer())

        async def send(number: int, offset: int, buffer: _Buffer) -> None:
            try:
                size = min(part_size, spool.size - offset)
                crc32 = await spool.read_into(buffer, offset, size)
                reply = await self._call(
                    key,
                    "upload_part",
                    buffer,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    ChecksumCRC32=crc32,
                )
                parts[number] = {
                    "PartNumber": number,
                    "ETag": reply["ETag"],
                    "ChecksumCRC32": crc32,
                }
            finally:
                buffers.put_nowait(buffer)

        try:
            async with asyncio.TaskGroup() as sending:
                for number, offset in enumerate(range(0, spool.size, part_size), 1):
                    sent = send(number, offset, await buffers.get())
                    sending.create_task(sent, name=f"part {number} of {key}")
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        return [parts[n] for n in sorted(parts)]

    async def _put_multipart(
        self, key: str, reader: PartReader, head: list[bytes], condition: dict[str, str]
    ) -> ObjectInfo:
        upload_id: str = (await self._call(key, "create_multipart_upload", Key=key))["UploadId"]
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
                            f"{key}: more than {MAX_PARTS} parts of {self._part_size >> 20} "
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
            reply = await self._call(
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
        return await self._call(
            key,
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            **condition,
        )

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._call(key, "abort_multipart_upload", Key=key, UploadId=upload_id)
        except DriverError as exc:  # the original failure matters more; S3 lifecycle rules GC
            log.warning("could not abort multipart upload of %s: %s", key, exc)

    async def _attach_digest(self, key: str, etag: str, digest: BodyDigest) -> ObjectInfo:
        """Record the SHA-256 by copying the object onto itself, unless it was replaced since."""
        metadata = {SHA256_METADATA_KEY: digest.hexdigest()}
        try:
            if digest.size > self.single_copy_limit:
                version = await self._copy_in_parts(key, etag, digest.size, metadata)
            else:
                reply = await self._call(
                    key,
                    "copy_object",
                    Key=key,
                    CopySource={"Bucket": self._bucket, "Key": key},
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
        created = await self._call(key, "create_multipart_upload", Key=key, Metadata=metadata)
        upload_id: str = created["UploadId"]
        source = {"Bucket": self._bucket, "Key": key}
        step = min(COPY_PART_SIZE, self.single_copy_limit)
        try:
            parts: list[dict[str, Any]] = []
            for number, start in enumerate(range(0, size, step), 1):
                end = min(start + step, size) - 1
                reply = await self._call(
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

    @asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        validate_key(key)
        reply = await self._call(key, "get_object", Key=key)
        reader = _S3Reader(self, _info(key, reply), reply["Body"], chunk_size)
        try:
            yield reader
        finally:
            reader.release()

    def open(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self._open(key, chunk_size)

    async def _resume(self, info: ObjectInfo, offset: int) -> Any:
        """The rest of the object from ``offset``, provided it is still the version being read."""
        try:
            reply = await self._call(
                info.key, "get_object", Key=info.key, Range=f"bytes={offset}-", IfMatch=info.version
            )
        except (PreconditionFailed, NotFound) as exc:
            raise Unavailable(f"{info.key}: replaced while being read; read it again") from exc
        return reply["Body"]

    async def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        """One request through :class:`SmallObjectGetter` (a fraction of the client CPU of the
        streamed read: a log replay is one GET per entry), retried and translated as any
        request, its SHA-256 checked as every read's. A connection lost mid-body starts the
        whole GET again: there is little to resume in a small object."""
        validate_key(key)

        async def attempt() -> tuple[bytes, ObjectInfo]:
            with self._errors(f"s3://{self._bucket}/{key}"):
                return await self._small.get(key)

        data, info = await self.retry.run(f"s3 get_object {key}", attempt)
        await verify_whole(data, info)
        return data, info

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        return _info(key, await self._call(key, "head_object", Key=key))

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        params: dict[str, Any] = {"Prefix": prefix, "MaxKeys": max(1, min(page_size, 1000))}
        while True:
            reply = await self._call(prefix, "list_objects_v2", **params)
            for item in reply.get("Contents", []):
                yield ObjectInfo(
                    item["Key"], item["Size"], item["ETag"], None, item.get("LastModified")
                )
            token = reply.get("NextContinuationToken")
            if not reply.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        validate_key(key)
        condition = {} if if_match is None else {"IfMatch": if_match}
        try:
            await self._call(key, "delete_object", Key=key, **condition)
        except NotFound as exc:
            if if_match is not None:
                raise PreconditionFailed(f"{key}: does not exist, expected {if_match}") from exc

    async def check(self) -> None:
        """List one key rather than HEAD the bucket: a HEAD error has no body, so it cannot
        tell a bad key id or signature from a missing permission."""
        try:
            await self._call("", "list_objects_v2", MaxKeys=1)
        except NotFound as exc:
            raise Misconfigured(f"s3 bucket {self._bucket!r} does not exist: {exc}") from exc

    async def close(self) -> None:
        await self._resources.aclose()


def _info(key: str, reply: dict[str, Any]) -> ObjectInfo:
    metadata: dict[str, str] = reply.get("Metadata") or {}
    modified: datetime | None = reply.get("LastModified")
    return ObjectInfo(
        key, reply["ContentLength"], reply["ETag"], metadata.get(SHA256_METADATA_KEY), modified
    )


async def _chain(*streams: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for stream in streams:
        async for chunk in stream:
            yield chunk


def _quoted(etag: str) -> str:
    """An ETag in the quoted form HEAD, GET and LIST give: SeaweedFS leaves CopyObject's bare."""
    return etag if etag.startswith('"') else f'"{etag}"'


class _Buffer(io.BytesIO):
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


def _client_options(
    settings: CloudStorageSettings, secrets: StorageSecrets | None
) -> dict[str, Any]:
    s3 = settings.s3
    style = s3.addressing_style
    if style == "auto" and s3.endpoint:
        style = "path"
    options: dict[str, Any] = {
        "region_name": s3.region,
        "endpoint_url": s3.endpoint or None,
        "config": AioConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            # Content-MD5 on every body already lets the server refuse altered bytes; a SHA-256
            # of each payload for the signature would add a pass over every byte on plain-HTTP
            # endpoints (botocore skips it over HTTPS when Content-MD5 is set anyway).
            s3={"addressing_style": style, "payload_signing_enabled": False},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            connect_timeout=10,
            read_timeout=60,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            warm_up_loader_caches=True,
        ),
    }
    if settings.use_secret and secrets is not None:
        if secrets.access_key is None or secrets.secret_key is None:
            raise Misconfigured(
                f"s3: secret {settings.secret_name!r} must hold both accessKey and secretKey"
            )
        options["aws_access_key_id"] = secrets.access_key.get_secret_value()
        options["aws_secret_access_key"] = secrets.secret_key.get_secret_value()
    return options


async def connect(settings: CloudStorageSettings, secrets: StorageSecrets | None) -> ObjectStore:
    """Factory hook: an S3 client with the secret's keys, or the SDK's ambient credentials."""
    options = _client_options(settings, secrets)
    policy = RetryPolicy.from_settings(settings.retry)
    resources = AsyncExitStack()
    try:
        with _vendor_errors("s3 client", settings.s3.bucket):
            client = await resources.enter_async_context(
                get_session().create_client("s3", **options)
            )
    except BaseException:
        await resources.aclose()
        raise
    return S3ObjectStore(
        client,
        settings.s3.bucket,
        retry=policy,
        part_size=settings.part_size_mib << 20,
        resources=resources,
        spool_dir=settings.s3.spool_dir or None,
        spool_budget=SpoolBudget(settings.s3.spool_mib << 20) if settings.s3.spool_mib else None,
    )


HASH_IN_THREAD_BYTES = 1 << 20
"""Bodies from this size are hashed in a thread (hashlib releases the GIL), off the loop."""


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
    if len(body) >= HASH_IN_THREAD_BYTES:
        digest = await asyncio.to_thread(lambda: hashlib.md5(body, usedforsecurity=False).digest())
    else:
        digest = hashlib.md5(body, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()
