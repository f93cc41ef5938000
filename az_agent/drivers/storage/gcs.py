"""The ``gcs`` driver: Google Cloud Storage through gcloud-aio-storage and its JSON API.

* gcloud-aio-storage does the plain calls (multipart upload, metadata, list, delete, bucket).
  What it lacks is sent directly on the same session with the same token: resumable chunked
  uploads of streams of unknown length (:mod:`~az_agent.drivers.storage.gcs_upload`),
  generation-pinned streamed reads, status queries.
* A body that fits in one part is one **multipart** upload carrying its SHA-256 in the object
  metadata and its condition (``ifGenerationMatch=0`` create-only, ``=<generation>`` CAS).
  A larger body is a resumable upload cut into parts in one reused buffer; its SHA-256 is known
  only at the end and is then attached by a metadata PATCH pinned to the new generation (a
  metadata patch does not change the generation). Readers see no checksum in between.
* The version token is the object's generation; reads are pinned to the generation whose
  size and checksum they verify against.
* Our :class:`RetryPolicy` is the only retry loop: gcloud-aio's storage calls do not retry,
  and its token's tenacity loop is bypassed by :class:`_Token`.
* fake-gcs-server 1.54 honours ``ifGenerationMatch`` on multipart uploads only, not on
  resumable uploads, metadata patches or deletes, and it finalizes a resumable upload on any
  ``bytes */...`` request. Hence the metadata pre-checks below and no status query against an
  emulator; real GCS enforces the precondition parameters atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from gcloud.aio.auth.token import BaseToken, Token
from gcloud.aio.storage import Storage

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
from az_agent.drivers.storage.gcs_upload import CONTENT_TYPE, Missing, ResumableUpload
from az_agent.drivers.storage.keys import validate_key
from az_agent.drivers.storage.retry import RetryPolicy
from az_agent.drivers.storage.streams import BodyDigest, PartReader

log = logging.getLogger(__name__)

GOOGLE_API_ROOT = "https://storage.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REQUEST_TIMEOUT = 30  # seconds, metadata-sized requests through gcloud-aio
_UPLOAD_TIMEOUT = 600  # seconds, one part on the wire
_PINNED_READ_TRIES = 3
_SESSION_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=120)


def _translate(exc: Exception, what: str, bucket: str, missing: Missing, auth: bool) -> Exception:
    """The one place where aiohttp/gcloud-aio failures become our error types."""
    if isinstance(exc, aiohttp.ClientResponseError):
        status, detail = exc.status, exc.message[:300]
        if status in RETRYABLE_STATUS:
            return Unavailable(f"gcs {what}: HTTP {status} {detail}")
        if auth or status == 401:
            return Misconfigured(f"gcs {what}: the credentials were rejected (HTTP {status})")
        if status == 403:
            return PermissionDenied(f"gcs {what}: access to bucket '{bucket}' denied: {detail}")
        if status == 412:
            return PreconditionFailed(f"gcs {what}: precondition failed")
        if status in (404, 410) and missing == "session":
            return DriverError(f"gcs {what}: the resumable upload session is gone")
        if status == 404 and (missing == "bucket" or "bucket does not exist" in detail):
            return Misconfigured(f"gcs bucket '{bucket}' does not exist")
        if status == 404:
            return NotFound(what)
        if status == 400:
            return Misconfigured(f"gcs {what}: bad request: {detail}")
        return DriverError(f"gcs {what}: HTTP {status} {detail}")
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return Unavailable(f"gcs {what}: {type(exc).__name__}: {exc}")
    # Only token building gets here (bad key material, missing fields): no detail, it may
    # echo credential text.
    return Misconfigured(f"gcs {what}: cannot obtain an access token ({type(exc).__name__})")


class _Token(Token):
    """gcloud-aio's token without its tenacity retry loop: our RetryPolicy is the only one."""

    # The base attribute is tenacity's wrapper object, hence the ignore.
    async def acquire_access_token(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        await BaseToken.acquire_access_token.__wrapped__(self, *args, **kwargs)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value)
    return None


def _object_info(obj: Mapping[str, Any]) -> ObjectInfo:
    metadata = obj.get("metadata") or {}
    return ObjectInfo(
        key=str(obj["name"]),
        size=int(obj.get("size", 0)),
        version=str(obj["generation"]),
        sha256=metadata.get(SHA256_METADATA_KEY),
        modified=_parse_time(obj.get("updated")),
    )


class _GcsReader(ObjectReader):
    def __init__(
        self, store: GcsObjectStore, response: aiohttp.ClientResponse, info: ObjectInfo, size: int
    ) -> None:
        self._store = store
        self._response = response
        self.info = info
        self._chunk_size = size

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        with self._store.translated(f"read {self.info.key}"):
            async for chunk in self._response.content.iter_chunked(self._chunk_size):
                yield chunk


class GcsObjectStore(ObjectStore):
    """One GCS bucket; see the module docstring for how objects are written and read."""

    def __init__(
        self,
        bucket: str,
        *,
        session: aiohttp.ClientSession,
        token: Token | None,
        api_root: str = GOOGLE_API_ROOT,
        retry: RetryPolicy | None = None,
        part_size: int = 8 << 20,
    ) -> None:
        """``token=None`` means an emulator: requests carry no credentials. ``session`` is
        owned by the store from now on and closed by :meth:`close`."""
        if part_size % (256 << 10):
            raise ValueError("gcs part size must be a multiple of 256 KiB")
        self._bucket = bucket
        self._session = session
        self._token = token
        self._root = api_root.rstrip("/")
        self._part_size = part_size
        self.retry = retry or RetryPolicy()
        self.emulated = token is None
        shared: Any = session  # gcloud-aio annotates sessions with its sync twin's type
        # An explicit empty service file keeps gcloud-aio from reading ambient credential
        # files for a token it never uses (it sends no Authorization header to an emulator).
        self._storage = Storage(
            session=shared,
            token=token or _Token(service_file=io.StringIO("{}"), session=shared),
            api_root=self._root,
            api_is_dev=self.emulated,
        )

    @property
    def write_spacing(self) -> float:
        """GCS allows about one write a second to one object (more get 429)."""
        return 1.0

    @contextlib.contextmanager
    def translated(
        self, what: str, *, missing: Missing = "object", auth: bool = False
    ) -> Iterator[None]:
        """Turn the failures of the requests inside into our errors (see :func:`_translate`)."""
        try:
            yield
        except DriverError:
            raise
        except Exception as exc:
            if not auth and not isinstance(exc, aiohttp.ClientError | TimeoutError):
                raise
            raise _translate(exc, what, self._bucket, missing, auth) from exc

    async def _auth(self) -> dict[str, str]:
        if self._token is None:
            return {}
        with self.translated("authentication", auth=True):
            token = await self._token.get()
        return {"Authorization": f"Bearer {token}"}

    async def send(
        self, method: str, url: str, *, headers: Mapping[str, str], **kwargs: Any
    ) -> aiohttp.ClientResponse:
        """A direct JSON-API request; an error status raises as gcloud-aio raises it."""
        headers = {**await self._auth(), **headers}
        response = await self._session.request(
            method, url, headers=headers, allow_redirects=False, **kwargs
        )
        if response.status >= 400:
            async with response:
                body = await response.text(errors="replace")
            raise aiohttp.ClientResponseError(
                response.request_info,
                response.history,
                status=response.status,
                message=f"{response.reason}: {body}",
                headers=response.headers,
            )
        return response

    def _object_url(self, key: str) -> str:
        return f"{self._root}/storage/v1/b/{quote(self._bucket, safe='')}/o/{quote(key, safe='')}"

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        check_conditions(if_none_match, if_match)
        validate_key(key)
        generation = "0" if if_none_match else if_match
        if generation is not None and not generation.isdigit():
            raise PreconditionFailed(f"gcs put {key}: {generation!r} is no generation")
        if isinstance(body, bytes) and len(body) <= self._part_size:
            digest = BodyDigest()
            digest.update(body)
            return await self._put_single(key, body, digest, generation)
        reader = PartReader(body)
        part = bytearray(self._part_size)
        filled = await reader.fill(part)
        if not await reader.has_more():
            data = bytes(memoryview(part)[:filled])
            del part
            return await self._put_single(key, data, reader.digest, generation)
        return await self._put_resumable(key, reader, part, generation)

    async def _put_single(
        self, key: str, data: bytes, digest: BodyDigest, generation: str | None
    ) -> ObjectInfo:
        sha256 = digest.hexdigest()

        async def once() -> dict[str, Any]:
            headers = await self._auth()
            params = {} if generation is None else {"ifGenerationMatch": generation}
            with self.translated(f"put {key}", missing="bucket"):
                obj: dict[str, Any] = await self._storage.upload(
                    self._bucket,
                    key,
                    data,
                    content_type=CONTENT_TYPE,
                    parameters=params,
                    headers=headers,
                    metadata={"metadata": {SHA256_METADATA_KEY: sha256}},
                    force_resumable_upload=False,  # multipart: the only kind fake-gcs checks
                    timeout=_UPLOAD_TIMEOUT,
                )
            return obj

        return replace(_object_info(await self.retry.run(f"gcs put {key}", once)), sha256=sha256)

    async def _put_resumable(
        self, key: str, reader: PartReader, part: bytearray, generation: str | None
    ) -> ObjectInfo:
        if generation is not None:
            await self._precheck(key, generation)
        url = f"{self._root}/upload/storage/v1/b/{quote(self._bucket, safe='')}/o"
        upload = await ResumableUpload.start(self, url, key, generation)
        obj = await upload.write_all(reader, part)
        sha256 = reader.digest.hexdigest()
        info = _object_info(obj)
        await self._record_sha256(info, sha256)
        return replace(info, sha256=sha256)

    async def _record_sha256(self, info: ObjectInfo, sha256: str) -> None:
        """Attach the checksum to the generation just written, and to no other."""

        async def once() -> None:
            headers = await self._auth()
            with self.translated(f"record sha256 of {info.key}"):
                await self._storage.patch_metadata(
                    self._bucket,
                    info.key,
                    {"metadata": {SHA256_METADATA_KEY: sha256}},
                    params={"ifGenerationMatch": info.version},
                    headers=headers,
                    timeout=_REQUEST_TIMEOUT,
                )

        try:
            await self.retry.run(f"gcs record sha256 of {info.key}", once)
        except (PreconditionFailed, NotFound):
            log.debug("gcs %s: replaced before its sha256 was recorded", info.key)

    async def _precheck(self, key: str, generation: str) -> None:
        """Fail early when ``key`` is not at ``generation`` ("0": absent).

        The atomic guard is the ``ifGenerationMatch`` parameter sent with the request itself;
        this check only covers servers that ignore it (fake-gcs 1.54 on deletes and
        resumable uploads), and a race can still slip between it and the request there.
        """
        try:
            current = (await self.head(key)).version
        except NotFound:
            current = "0"
        if current != generation:
            raise PreconditionFailed(f"gcs {key}: generation is {current}, expected {generation}")

    @asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        validate_key(key)
        info, response = await self.retry.run(f"gcs open {key}", lambda: self._start_read(key))
        try:
            yield _GcsReader(self, response, info, chunk_size)
        finally:
            response.release()

    def open(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self._open(key, chunk_size)

    async def _start_read(self, key: str) -> tuple[ObjectInfo, aiohttp.ClientResponse]:
        """Metadata, then the bytes of that very generation, so size and checksum match."""
        for _ in range(_PINNED_READ_TRIES):
            info = await self._head_once(key)
            params = {"alt": "media", "generation": info.version}
            with contextlib.suppress(NotFound), self.translated(f"read {key}"):
                url = self._object_url(key)
                return info, await self.send("GET", url, params=params, headers={})
            # That generation was replaced (or deleted) in between: look again.
        raise Unavailable(f"gcs read {key}: replaced faster than it could be opened")

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        return await self.retry.run(f"gcs head {key}", lambda: self._head_once(key))

    async def _head_once(self, key: str) -> ObjectInfo:
        headers = await self._auth()
        with self.translated(key):
            obj = await self._storage.download_metadata(
                self._bucket, key, headers=headers, timeout=_REQUEST_TIMEOUT
            )
        return _object_info(obj)

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        params = {"maxResults": str(page_size)}
        if prefix:
            params["prefix"] = prefix
        while True:
            page = await self.retry.run(
                f"gcs list {prefix!r}", functools.partial(self._list_page, dict(params))
            )
            for item in page.get("items", []):
                yield _object_info(item)
            token = page.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = str(token)

    async def _list_page(self, params: dict[str, str]) -> dict[str, Any]:
        headers = await self._auth()
        with self.translated("list", missing="bucket"):
            page: dict[str, Any] = await self._storage.list_objects(
                self._bucket, params=params, headers=headers, timeout=_REQUEST_TIMEOUT
            )
        return page

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        validate_key(key)
        if if_match is not None:
            if not if_match.isdigit():
                raise PreconditionFailed(f"gcs delete {key}: {if_match!r} is no generation")
            await self._precheck(key, if_match)
        await self.retry.run(f"gcs delete {key}", lambda: self._delete_once(key, if_match))

    async def _delete_once(self, key: str, if_match: str | None) -> None:
        headers = await self._auth()
        params = {} if if_match is None else {"ifGenerationMatch": if_match}
        try:
            with self.translated(f"delete {key}"):
                await self._storage.delete(
                    self._bucket, key, params=params, headers=headers, timeout=_REQUEST_TIMEOUT
                )
        except NotFound as exc:
            if if_match is not None:
                raise PreconditionFailed(f"gcs delete {key}: no such object") from exc

    async def check(self) -> None:
        await self.retry.run(f"gcs check bucket {self._bucket}", self._check_once)

    async def _check_once(self) -> None:
        headers = await self._auth()
        try:
            with self.translated(f"check bucket '{self._bucket}'", missing="bucket"):
                await self._storage.get_bucket_metadata(
                    self._bucket, headers=headers, timeout=_REQUEST_TIMEOUT
                )
        except PermissionDenied:
            # Object roles (roles/storage.objectAdmin) lack storage.buckets.get; listing
            # objects is what the agent needs, so that is what decides.
            await self._list_page({"maxResults": "1"})

    async def close(self) -> None:
        refresh = self._token.acquiring if self._token is not None else None
        if refresh is not None and not refresh.done():
            refresh.cancel()  # gcloud-aio's background token refresh: we own it through the token
            await asyncio.wait([refresh])
        await self._session.close()


def _resolve_endpoint(configured: str) -> tuple[str, bool]:
    """API root and whether it is an emulator (``endpoint``, else STORAGE_EMULATOR_HOST)."""
    endpoint = configured or os.environ.get("STORAGE_EMULATOR_HOST", "")
    if not endpoint:
        return GOOGLE_API_ROOT, False
    if not endpoint.startswith(("http://", "https://")):
        raise Misconfigured(
            f"gcs endpoint {endpoint!r} must start with http:// (STORAGE_EMULATOR_HOST too)"
        )
    return endpoint.rstrip("/"), True


def _service_account_file(text: str, secret_name: str) -> io.StringIO:
    """The secret as an in-memory file, after checking it is a credentials document:
    gcloud-aio would silently fall back to the metadata server on a broken one."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "type" not in data:
        # Raised outside the except block: the decode error quotes the secret's text.
        raise Misconfigured(f"gcs: secretKey of secret {secret_name!r} is not credentials JSON")
    return io.StringIO(text)


async def _make_token(
    settings: CloudStorageSettings, secrets: StorageSecrets | None, session: aiohttp.ClientSession
) -> Token:
    shared: Any = session  # gcloud-aio annotates sessions with its sync twin's type
    secret = secrets.secret_key if secrets is not None else None
    if settings.use_secret and secret is not None:
        service_file = _service_account_file(secret.get_secret_value(), settings.secret_name)
        try:
            return _Token(service_file=service_file, session=shared, scopes=SCOPES)
        except (ValueError, KeyError) as exc:
            raise Misconfigured(f"gcs: unusable secretKey ({type(exc).__name__})") from exc
    if settings.use_secret:
        log.warning("gcs: secret %r has no secretKey; ambient credentials", settings.secret_name)
    try:
        # GOOGLE_APPLICATION_CREDENTIALS or gcloud's ADC file (read in a thread), else the
        # metadata server (workload identity).
        return await asyncio.to_thread(_Token, session=shared, scopes=SCOPES)
    except (OSError, ValueError, KeyError) as exc:
        raise Misconfigured(f"gcs: cannot load ambient credentials ({type(exc).__name__})") from exc


async def connect(settings: CloudStorageSettings, secrets: StorageSecrets | None) -> ObjectStore:
    """Factory hook: the bucket of ``settings.gcs`` with a session of its own."""
    api_root, emulated = _resolve_endpoint(settings.gcs.endpoint)
    session = aiohttp.ClientSession(timeout=_SESSION_TIMEOUT)
    try:
        token = None if emulated else await _make_token(settings, secrets, session)
    except BaseException:
        await session.close()
        raise
    retry = RetryPolicy.from_settings(settings.retry)
    return GcsObjectStore(
        settings.gcs.bucket,
        session=session,
        token=token,
        api_root=api_root,
        retry=retry,
        part_size=settings.part_size_mib << 20,
    )
