"""Azure Blob Storage as an :class:`ObjectStore`, through azure-storage-blob's asyncio client.

Choices that are not obvious from the interface:

* The SDK's own retries are off (``retry_total=0``), so our :class:`RetryPolicy` is the only one
  and attempts do not multiply; every vendor error goes through :func:`translate_error`.
* The version token is the ETag, always quoted: listings return it bare, headers quoted.
* The SHA-256 sits in metadata ``az_sha256``: Azure metadata names must be C# identifiers, so
  the hyphen of :data:`SHA256_METADATA_KEY` cannot be used.
* Create-only is ``If-None-Match: *`` (``MatchConditions.IfMissing`` alone: adding
  ``etag="*"`` makes the SDK hand ``etag`` to aiohttp, a TypeError); a lost race is 409
  BlobAlreadyExists. Compare-and-swap is ``If-Match``; a lost race is 412.
* A body larger than one part is staged block by block into one reused buffer and committed
  with its SHA-256 and its condition. Block ids carry a random upload id, so two writers of one
  key never mix blocks; Azure garbage-collects uncommitted blocks, so there is nothing to abort.
* Reads are a HEAD, then ranged GETs pinned to that ETag, each retried on its own.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar, cast

import aiohttp
from azure.core import MatchConditions
from azure.core.async_paging import AsyncPageIterator
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobProperties
from azure.storage.blob.aio import BlobClient, ContainerClient

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
from az_agent.drivers.storage.streams import BodyDigest, PartReader

log = logging.getLogger(__name__)

T = TypeVar("T")

SHA256_METADATA = SHA256_METADATA_KEY.replace("-", "_")
MAX_BLOCKS = 50_000
SINGLE_PUT_LIMIT = 1 << 20  # aiohttp writes larger bytes bodies at once, with a ResourceWarning
_VENDOR_ERRORS = (AzureError, aiohttp.ClientError, TimeoutError)
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_CODES = {"ServerBusy", "OperationTimedOut", "InternalError"}
# Azurite answers a wrong shared key with AuthorizationFailure, Azure with AuthenticationFailed;
# on Azure AuthorizationFailure also means network rules or disabled key access: configuration.
_BAD_CREDENTIAL_CODES = {
    "AuthenticationFailed",
    "InvalidAuthenticationInfo",
    "AuthorizationFailure",
}


def _error_code(exc: HttpResponseError) -> str:
    code: Any = getattr(exc, "error_code", None)
    if isinstance(code, Enum):
        code = code.value
    if not code:
        code = getattr(exc.response, "headers", {}).get("x-ms-error-code")
    return str(code or "")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def translate_error(
    exc: BaseException, subject: str, container: str, *, conditional: bool = False
) -> DriverError:
    """Our error for a vendor one; ``conditional``: the request carried ``If-Match``, so a
    missing blob means the compare-and-swap lost. Messages never quote credentials."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError | IncompleteReadError):
        return Unavailable(f"{subject}: connection failed: {_first_line(exc)}")
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return Unavailable(f"{subject}: connection failed: {type(exc).__name__}")
    if not isinstance(exc, HttpResponseError):
        return DriverError(f"{subject}: {type(exc).__name__}: {_first_line(exc)}")
    status, code = exc.status_code, _error_code(exc)
    what = f"{subject}: HTTP {status} {code}".rstrip()
    if status is None and isinstance(exc, ClientAuthenticationError):
        return Misconfigured(f"azure: the configured credentials cannot sign requests ({what})")
    if status is None:  # no HTTP answer: the SDK wraps body read failures this way
        return Unavailable(f"{what}: {_first_line(exc)}")
    if code == "ContainerNotFound":
        return Misconfigured(f"azure container {container!r} does not exist")
    if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
        return Unavailable(what)
    if status == 412 or (status == 409 and code == "BlobAlreadyExists"):
        return PreconditionFailed(what)
    if status == 404:
        return PreconditionFailed(f"{what} (conditional)") if conditional else NotFound(what)
    if status == 401 or (status == 403 and code in _BAD_CREDENTIAL_CODES):
        return Misconfigured(f"azure: the storage account rejected the credentials ({what})")
    if status == 403:
        return PermissionDenied(what)
    return DriverError(f"{what}: {_first_line(exc)}")


def _version(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _conditions(if_none_match: bool, if_match: str | None) -> dict[str, Any]:
    """SDK arguments of a write's condition; ``etag`` among them means compare-and-swap."""
    if if_none_match:
        return {"match_condition": MatchConditions.IfMissing}
    if if_match is not None:
        return {"etag": if_match, "match_condition": MatchConditions.IfNotModified}
    return {}


def _info(key: str, props: BlobProperties) -> ObjectInfo:
    sha256 = (props.metadata or {}).get(SHA256_METADATA)
    modified: datetime | None = props.last_modified
    return ObjectInfo(key, int(props.size), _version(str(props.etag)), sha256, modified)


class _PartFile(io.RawIOBase):
    """A block as a read-only file over a view of the part buffer.

    aiohttp streams file bodies piece by piece, whereas a ``bytes`` body above 1 MiB is written
    at once (with a ResourceWarning) and would cost one more copy of the part.
    """

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        self._position = max(0, base[whence] + offset)
        return self._position

    def read(self, size: int | None = -1, /) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._position + size
        data = bytes(self._view[self._position : end])
        self._position += len(data)
        return data


class _AzureReader(ObjectReader):
    def __init__(self, store: AzureObjectStore, info: ObjectInfo, chunk_size: int) -> None:
        self._store = store
        self.info = info
        self._stored = info  # ``info`` is rewritten by the prefix layer; keep the real key
        self._chunk_size = chunk_size

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        size = self._stored.size
        for offset in range(0, size, self._chunk_size):
            length = min(self._chunk_size, size - offset)
            yield await self._store.read_range(self._stored, offset, length)


class AzureObjectStore(ObjectStore):
    """One blob container; see the module docstring for how writes and reads work."""

    def __init__(
        self,
        container: ContainerClient,
        *,
        retry: RetryPolicy,
        part_size: int,
        credential: AsyncTokenCredential | None = None,
    ) -> None:
        self._container = container
        self._name = container.container_name
        self._retry = retry
        self._part_size = part_size
        self._credential = credential

    async def _call(
        self, subject: str, call: Callable[[], Awaitable[T]], *, conditional: bool = False
    ) -> T:
        """One request, translated, retried on ``Unavailable`` by our policy."""

        async def attempt() -> T:
            try:
                return await call()
            except _VENDOR_ERRORS as exc:
                raise translate_error(exc, subject, self._name, conditional=conditional) from exc

        return await self._retry.run(subject, attempt)

    def _blob(self, key: str) -> BlobClient:
        return self._container.get_blob_client(validate_key(key))

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        check_conditions(if_none_match, if_match)
        blob = self._blob(key)
        conditions = _conditions(if_none_match, if_match)
        if isinstance(body, bytes) and len(body) <= SINGLE_PUT_LIMIT:
            digest = BodyDigest()
            digest.update(body)
            reply = await self._put_single(blob, body, digest, conditions)
        else:
            reader = PartReader(body)
            size = min(len(body), self._part_size) if isinstance(body, bytes) else self._part_size
            part = bytearray(size)
            filled = await reader.fill(part)
            if filled <= SINGLE_PUT_LIMIT and not await reader.has_more():
                reply = await self._put_single(
                    blob, bytes(part[:filled]), reader.digest, conditions
                )
            else:
                reply = await self._put_blocks(blob, part, filled, reader, conditions)
            digest = reader.digest
        modified: datetime | None = reply.get("last_modified")
        return ObjectInfo(key, digest.size, _version(reply["etag"]), digest.hexdigest(), modified)

    async def _put_single(
        self, blob: BlobClient, data: bytes, digest: BodyDigest, conditions: dict[str, Any]
    ) -> dict[str, Any]:
        upload = functools.partial(
            blob.upload_blob,
            data,
            overwrite=True,  # the condition, if any, decides
            metadata={SHA256_METADATA: digest.hexdigest()},
            **conditions,
        )
        subject = f"azure put {blob.blob_name!r}"
        return await self._call(subject, upload, conditional="etag" in conditions)

    async def _put_blocks(
        self,
        blob: BlobClient,
        part: bytearray,
        filled: int,
        reader: PartReader,
        conditions: dict[str, Any],
    ) -> dict[str, Any]:
        subject = f"azure put {blob.blob_name!r}"
        upload_id = uuid.uuid4().hex
        blocks: list[BlobBlock] = []
        view = memoryview(part)
        while True:
            if len(blocks) >= MAX_BLOCKS:
                raise Misconfigured(
                    f"{subject}: more than {MAX_BLOCKS} blocks of {self._part_size >> 20} MiB; "
                    "raise partSizeMib to store objects this large"
                )
            block_id = f"{upload_id}-{len(blocks):06d}"  # fixed width; the SDK base64s it
            await self._stage(f"{subject} block {len(blocks)}", blob, block_id, view[:filled])
            blocks.append(BlobBlock(block_id))
            if not await reader.has_more():
                break
            filled = await reader.fill(part)
        metadata = {SHA256_METADATA: reader.digest.hexdigest()}
        commit = functools.partial(blob.commit_block_list, blocks, metadata=metadata, **conditions)
        return await self._call(f"{subject} commit", commit, conditional="etag" in conditions)

    async def _stage(self, subject: str, blob: BlobClient, block_id: str, data: memoryview) -> None:
        """Stage one block; every attempt reads the view afresh."""
        await self._call(
            subject, lambda: blob.stage_block(block_id, _PartFile(data), length=len(data))
        )

    async def head(self, key: str) -> ObjectInfo:
        blob = self._blob(key)
        props = await self._call(f"azure head {key!r}", blob.get_blob_properties)
        return _info(key, props)

    async def read_range(self, info: ObjectInfo, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of exactly the version ``info`` describes; the
        object changing under the reader raises ``PreconditionFailed``."""
        blob = self._blob(info.key)

        async def download() -> bytes:
            stream = await blob.download_blob(
                offset=offset,
                length=length,
                etag=info.version,
                match_condition=MatchConditions.IfNotModified,
            )
            return await stream.readall()

        return await self._call(f"azure read {info.key!r} at {offset}", download)

    @asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        info = await self.head(key)
        yield _AzureReader(self, info, max(1, min(chunk_size, self._part_size)))

    def open(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self._open(key, chunk_size)

    async def _page(
        self, prefix: str, page_size: int, token: str | None
    ) -> tuple[list[ObjectInfo], str | None]:
        """One page of the listing and the token of the next one (``None``: last page)."""
        listing = self._container.list_blobs(
            name_starts_with=prefix or None, include=["metadata"], results_per_page=page_size
        )
        pages = cast(AsyncPageIterator[BlobProperties], listing.by_page(continuation_token=token))
        page = await anext(pages)
        infos = [
            _info(item.name, item)
            async for item in page
            if (item.metadata or {}).get("hdi_isfolder") != "true"  # hierarchical namespaces
        ]
        next_token: str | None = pages.continuation_token
        return infos, next_token or None

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        token: str | None = None
        while True:
            fetch = functools.partial(self._page, prefix, page_size, token)
            infos, token = await self._call(f"azure list {prefix!r}", fetch)
            for info in infos:
                yield info
            if token is None:
                return

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        blob = self._blob(key)
        conditions = _conditions(False, if_match)
        delete = functools.partial(blob.delete_blob, **conditions)
        try:
            await self._call(f"azure delete {key!r}", delete, conditional="etag" in conditions)
        except NotFound:
            return  # only without if_match: with it, a missing blob is PreconditionFailed

    async def check(self) -> None:
        """List one blob: it proves the container, the credentials and the right to list, and
        unlike Get Container Properties it is allowed to a container SAS."""
        probe = functools.partial(self._page, "", 1, None)
        await self._call(f"azure check container {self._name!r}", probe)

    async def close(self) -> None:
        try:
            await self._container.close()
        finally:
            if self._credential is not None:
                await self._credential.close()


def with_blob_endpoint(connection_string: str, endpoint: str) -> str:
    """``connection_string`` with its ``BlobEndpoint`` replaced (or added)."""
    fields = [f for f in connection_string.split(";") if f.strip()]
    kept = [f for f in fields if f.split("=", 1)[0].strip().lower() != "blobendpoint"]
    return ";".join([*kept, f"BlobEndpoint={endpoint.rstrip('/')}"]) + ";"


def _ambient_credential() -> AsyncTokenCredential:
    try:
        identity = importlib.import_module("azure.identity.aio")
    except ImportError as exc:
        raise Misconfigured(
            "azure: useSecret is false, and the ambient identity needs the azure-identity "
            "package, which is not installed (pip install azure-identity)"
        ) from exc
    credential: AsyncTokenCredential = identity.DefaultAzureCredential()
    return credential


def _client_options(settings: CloudStorageSettings) -> dict[str, Any]:
    part_size = settings.part_size_mib << 20
    return {
        "retry_total": 0,  # our RetryPolicy is the only one
        "max_single_put_size": part_size,
        "max_single_get_size": part_size,
        "max_chunk_get_size": part_size,
    }


async def connect(settings: CloudStorageSettings, secrets: StorageSecrets | None) -> ObjectStore:
    """Factory hook: a connection string from the secret, or the ambient identity."""
    azure = settings.azure
    retry = RetryPolicy.from_settings(settings.retry)
    options = _client_options(settings)
    store_options: dict[str, Any] = {"retry": retry, "part_size": settings.part_size_mib << 20}
    if settings.use_secret:
        if secrets is None or secrets.connection_string is None:
            raise Misconfigured(
                f"azure: useSecret is true but secret {settings.secret_name!r} "
                "has no connectionString"
            )
        conn = secrets.connection_string.get_secret_value()
        if azure.endpoint:
            conn = with_blob_endpoint(conn, azure.endpoint)
        try:
            client = ContainerClient.from_connection_string(conn, azure.container, **options)
        except ValueError as exc:
            raise Misconfigured("azure: the connection string is malformed") from exc
        return AzureObjectStore(client, **store_options)
    url = azure.endpoint or azure.account_url
    if not url:
        raise Misconfigured("azure: useSecret is false, so azure.accountUrl must be set")
    credential = _ambient_credential()
    try:
        client = ContainerClient(url, azure.container, credential=credential, **options)
    except ValueError as exc:
        await credential.close()
        raise Misconfigured(f"azure: accountUrl {url!r} is not usable: {exc}") from exc
    log.info("azure: using the ambient identity for %s", url)
    return AzureObjectStore(client, credential=credential, **store_options)
