"""Amazon S3 and S3-compatible stores as an :class:`ObjectStore`, through aiobotocore.

Choices that are not obvious from the interface:

* botocore's own retries are off, so our :class:`RetryPolicy` (full jitter) is the only one and
  attempts do not multiply; every vendor error goes through :func:`translate_error`.
* Writes, and the checksums that guard them, are :mod:`~az_agent.drivers.storage.s3_upload`'s.
* Request checksums are sent only when an operation requires them: S3-compatible stores often
  reject botocore's default CRC trailers, and we verify SHA-256 end to end ourselves.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator, Iterator
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
from az_agent.drivers.storage.memory_budget import MemoryBudget
from az_agent.drivers.storage.retry import RetryPolicy
from az_agent.drivers.storage.s3_reader import S3Reader
from az_agent.drivers.storage.s3_small import SmallObjectGetter, verify_whole
from az_agent.drivers.storage.s3_upload import SINGLE_COPY_LIMIT, RequestBuffer, S3Uploader
from az_agent.drivers.storage.spool import SpoolBudget

MAX_POOL_CONNECTIONS = 64
DEFAULT_MEMORY_BUDGET = 32 << 20
"""``s3.bufferMib``'s default: eight 4 MiB segments, or four 8 MiB parts, in flight at once."""

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


class S3ObjectStore(ObjectStore):
    """One S3 bucket; :mod:`~az_agent.drivers.storage.s3_upload` says how writes and checksums
    work.

    ``single_copy_limit`` is S3's; tests lower it to exercise the multipart copy. Bodies of
    known size above :data:`~az_agent.drivers.storage.s3_upload.SINGLE_PUT_LIMIT` are spooled
    in ``spool_dir`` (the system's temporary directory when ``None``) while ``spool_budget``
    has room; without a budget they are streamed. ``memory_budget`` bounds the bytes of request
    bodies all puts hold at once (the default: :data:`DEFAULT_MEMORY_BUDGET`).
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
        memory_budget: MemoryBudget | None = None,
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
        self.memory_budget = memory_budget or MemoryBudget(DEFAULT_MEMORY_BUDGET)

    def _errors(self, subject: str) -> contextlib.AbstractContextManager[None]:
        return _vendor_errors(subject, self._bucket)

    async def _call(
        self,
        subject: str,
        operation: str,
        body: bytes | RequestBuffer | None = None,
        /,
        **params: Any,
    ) -> dict[str, Any]:
        """One S3 request, translated and retried on ``Unavailable``.

        A body goes as a fresh ``BytesIO`` per attempt (it shares the bytes, no copy), or a
        :class:`RequestBuffer` rewound: a stream position left at the end by a failed attempt would
        send nothing, and aiohttp warns about large raw ``bytes``.
        """
        method = getattr(self._client, operation)

        async def attempt() -> dict[str, Any]:
            if isinstance(body, RequestBuffer):
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
            return await self._uploader().put(key, body, condition)
        except NotFound as exc:
            if if_match is None:
                raise
            raise PreconditionFailed(f"{key}: does not exist, expected version {if_match}") from exc

    def _uploader(self) -> S3Uploader:
        """Made for each put, so that it sees the settings (and requests) as they are then."""
        return S3Uploader(
            call=self._call,
            head=self.head,
            bucket=self._bucket,
            part_size=self._part_size,
            single_copy_limit=self.single_copy_limit,
            spool_dir=self.spool_dir,
            spool_budget=self.spool_budget,
            memory=self.memory_budget,
        )

    @asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        validate_key(key)
        reply = await self._call(key, "get_object", Key=key)
        reader = S3Reader(
            _info(key, reply),
            reply["Body"],
            chunk_size,
            retry=self.retry,
            errors=self._errors,
            resume=self._resume,
        )
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
        memory_budget=MemoryBudget(settings.s3.buffer_mib << 20),
    )
