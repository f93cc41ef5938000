"""What the shared contract cannot reach on S3: multipart edge paths, error mapping, resumed reads.

Multipart tests run against moto; error mapping and resumed reads against a scripted endpoint
(:class:`CannedS3`), since no emulator fails on demand in those ways.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pytest
from pydantic import SecretStr

from az_agent.drivers.errors import (
    Misconfigured,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from az_agent.drivers.storage import spool
from az_agent.drivers.storage.base import SHA256_METADATA_KEY
from az_agent.drivers.storage.config import (
    CloudStorageSettings,
    RetrySettings,
    S3Settings,
    StorageSecrets,
)
from az_agent.drivers.storage.memory_budget import MemoryBudget
from az_agent.drivers.storage.s3 import S3ObjectStore, connect
from az_agent.drivers.storage.s3_upload import SINGLE_PUT_LIMIT, RequestBuffer
from az_agent.drivers.storage.spool import SpoolBudget
from az_agent.drivers.storage.streams import BodyDigest, SizedBody
from tests.conftest import BackendPool
from tests.servers.moto import MotoBackend

MiB = 1 << 20
SECRET = "s3cr3t-do-not-print-0123456789"


@pytest.fixture
def moto(backend_pool: BackendPool) -> MotoBackend:
    backend = backend_pool.get("s3")
    assert isinstance(backend, MotoBackend)
    return backend


@pytest.fixture
async def s3(moto: MotoBackend) -> AsyncIterator[S3ObjectStore]:
    settings, secrets = await moto.new_bucket()
    store = await connect(settings, secrets)
    assert isinstance(store, S3ObjectStore)
    try:
        yield store
    finally:
        await store.close()


async def _open_uploads(moto: MotoBackend, store: S3ObjectStore) -> list[Any]:
    async with moto.client() as client:
        reply = await client.list_multipart_uploads(Bucket=store._bucket)
    uploads: list[Any] = reply.get("Uploads", [])
    return uploads


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), MiB):
        yield data[start : start + MiB]


async def test_multipart_copy_records_checksum_above_single_copy_limit(
    s3: S3ObjectStore,
) -> None:
    s3.single_copy_limit = 6 * MiB  # 13 MiB: copied as 6 + 6 + 1 MiB parts
    data = os.urandom(13 * MiB)
    written = await s3.put("huge.bin", _stream(data))
    assert written.version.endswith('-3"'), written.version
    head = await s3.head("huge.bin")
    assert (head.version, head.sha256) == (written.version, hashlib.sha256(data).hexdigest())
    assert (await s3.get("huge.bin"))[0] == data


def _record_operations(s3: S3ObjectStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The S3 operations ``s3`` calls from now on, in order."""
    operations: list[str] = []
    original = s3._call

    async def recording(
        subject: str, operation: str, body: bytes | None = None, /, **params: Any
    ) -> dict[str, Any]:
        operations.append(operation)
        return await original(subject, operation, body, **params)

    monkeypatch.setattr(s3, "_call", recording)
    return operations


async def test_uploads_in_flight_hold_no_more_bytes_than_the_memory_budget(
    s3: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Single PUTs, spooled parts and a streamed body at once: the request bodies held at any
    moment stay within ``s3.bufferMib``, whatever the sizes, and every object is whole."""
    s3.memory_budget = MemoryBudget(20 * MiB)
    original = s3._call
    in_flight = peak = 0

    async def measuring(
        subject: str, operation: str, body: bytes | RequestBuffer | None = None, /, **params: Any
    ) -> dict[str, Any]:
        nonlocal in_flight, peak
        size = 0
        if isinstance(body, RequestBuffer):
            size = body.getbuffer().nbytes
        elif body is not None:
            size = len(body)
        in_flight += size
        peak = max(peak, in_flight)
        try:
            return await original(subject, operation, body, **params)
        finally:
            in_flight -= size

    monkeypatch.setattr(s3, "_call", measuring)
    objects = {f"single-{n}.bin": os.urandom(12 * MiB) for n in range(4)}
    objects |= {f"spooled-{n}.bin": os.urandom(SINGLE_PUT_LIMIT + 5 * MiB) for n in range(2)}
    streamed = os.urandom(20 * MiB)
    puts = [s3.put(key, SizedBody(_stream(data), len(data))) for key, data in objects.items()]
    await asyncio.gather(*puts, s3.put("streamed.bin", _stream(streamed)))
    objects["streamed.bin"] = streamed
    assert 8 * MiB <= peak <= 20 * MiB
    assert s3.memory_budget.used == 0
    for key, data in objects.items():
        assert (await s3.get(key))[0] == data, key


async def test_a_sized_body_below_the_threshold_is_one_put(
    s3: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment download says its size: up to ``SINGLE_PUT_LIMIT`` it is one ``PutObject``
    (no multipart requests, no server-side copy), with its checksums as ever."""
    data = os.urandom(SINGLE_PUT_LIMIT)
    operations = _record_operations(s3, monkeypatch)
    written = await s3.put("sized.bin", SizedBody(_stream(data), len(data)))
    assert operations == ["put_object"]
    head = await s3.head("sized.bin")
    assert (head.version, head.sha256) == (written.version, hashlib.sha256(data).hexdigest())
    assert (await s3.get("sized.bin"))[0] == data
    operations.clear()
    await s3.put("unsized.bin", _stream(data))  # of unknown length: parts of 8 MiB
    assert operations.count("upload_part") == 3
    assert "copy_object" in operations


async def test_a_sized_body_longer_than_it_said_is_stored_whole(
    s3: S3ObjectStore, moto: MotoBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(SINGLE_PUT_LIMIT + 3 * MiB)
    operations = _record_operations(s3, monkeypatch)
    await s3.put("liar.bin", SizedBody(_stream(data), MiB))
    assert operations.count("upload_part") == 2  # the 24 MiB read as one part, then the rest
    assert (await s3.get("liar.bin"))[0] == data
    assert (await s3.head("liar.bin")).sha256 == hashlib.sha256(data).hexdigest()
    assert await _open_uploads(moto, s3) == []


async def test_a_sized_body_above_the_threshold_is_spooled_and_not_copied(
    s3: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spooled to a temporary file, a segment's SHA-256 is known before its upload starts:
    recorded at ``CreateMultipartUpload``, with no copy of the object onto itself after."""
    assert s3.spool_budget is not None
    data = os.urandom(SINGLE_PUT_LIMIT + 9 * MiB)  # parts of 8 MiB, the last one of 1
    operations = _record_operations(s3, monkeypatch)
    written = await s3.put("spooled.bin", SizedBody(_stream(data), len(data)))
    assert operations == [
        "create_multipart_upload",
        *["upload_part"] * 5,
        "complete_multipart_upload",
    ]
    head = await s3.head("spooled.bin")
    assert (head.version, head.sha256) == (written.version, hashlib.sha256(data).hexdigest())
    assert (await s3.get("spooled.bin"))[0] == data
    assert s3.spool_budget.used == 0


async def test_a_body_the_spool_cannot_hold_is_streamed(
    s3: S3ObjectStore, moto: MotoBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No room in the budget: streamed as before (its SHA-256 attached by a copy); a body
    that outgrows its room part-way goes on streamed from what was spooled."""
    s3.spool_budget = SpoolBudget(40 * MiB)
    operations = _record_operations(s3, monkeypatch)
    big = os.urandom(41 * MiB)
    await s3.put("too-big.bin", SizedBody(_stream(big), len(big)))
    assert "copy_object" in operations
    liar = os.urandom(45 * MiB)
    operations.clear()
    await s3.put("liar.bin", SizedBody(_stream(liar), 30 * MiB))
    assert "copy_object" in operations
    for key, data in (("too-big.bin", big), ("liar.bin", liar)):
        assert (await s3.get(key))[0] == data
        assert (await s3.head(key)).sha256 == hashlib.sha256(data).hexdigest()
    assert s3.spool_budget.used == 0
    assert await _open_uploads(moto, s3) == []


@pytest.mark.parametrize("full_after_mib", [0, 10, 29])
async def test_a_full_spool_disk_streams_the_rest_of_the_body(
    s3: S3ObjectStore, monkeypatch: pytest.MonkeyPatch, full_after_mib: int
) -> None:
    """ENOSPC while spooling (at the first write, part-way, at the last): the upload goes on
    streamed from what the file holds, the batch that failed and the rest of the source; the
    object is whole, its SHA-256 right."""
    real_write = spool._write
    written = 0

    def filling(file: BinaryIO, digest: BodyDigest, data: bytes | bytearray) -> None:
        nonlocal written
        if written + len(data) > full_after_mib * MiB:
            os.write(file.fileno(), bytes(data[: len(data) // 2]))  # a partial write, then full
            raise OSError(errno.ENOSPC, "No space left on device")
        written += len(data)
        real_write(file, digest, data)

    monkeypatch.setattr(spool, "_write", filling)
    operations = _record_operations(s3, monkeypatch)
    data = os.urandom(30 * MiB)
    await s3.put("full-disk.bin", SizedBody(_stream(data), len(data)))
    assert "copy_object" in operations  # streamed: its SHA-256 attached after
    assert (await s3.get("full-disk.bin"))[0] == data
    assert (await s3.head("full-disk.bin")).sha256 == hashlib.sha256(data).hexdigest()
    assert s3.spool_budget is not None
    assert s3.spool_budget.used == 0


async def test_a_spool_write_error_other_than_a_full_disk_fails_the_put(
    s3: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(file: BinaryIO, digest: BodyDigest, data: bytes | bytearray) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool, "_write", failing)
    data = os.urandom(30 * MiB)
    with pytest.raises(Unavailable, match="could not spool"):
        await s3.put("io-error.bin", SizedBody(_stream(data), len(data)))
    with pytest.raises(NotFound):
        await s3.head("io-error.bin")


async def test_a_spooled_body_that_fails_uploads_nothing(
    s3: S3ObjectStore, moto: MotoBackend
) -> None:
    """A segment whose check fails at its end (a wrong CRC) fails before any request."""

    async def failing() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield os.urandom(MiB)
        raise RuntimeError("creation.meta disagrees")

    with pytest.raises(RuntimeError, match=r"creation\.meta"):
        await s3.put("failed.bin", SizedBody(failing(), 30 * MiB))
    with pytest.raises(NotFound):
        await s3.head("failed.bin")
    assert await _open_uploads(moto, s3) == []
    assert s3.spool_budget is not None
    assert s3.spool_budget.used == 0


async def test_failed_stream_aborts_the_multipart_upload(
    s3: S3ObjectStore, moto: MotoBackend
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield os.urandom(MiB)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        await s3.put("broken.bin", broken())
    assert await _open_uploads(moto, s3) == []
    with pytest.raises(NotFound):
        await s3.head("broken.bin")


async def test_cancelled_put_aborts_the_multipart_upload(
    s3: S3ObjectStore, moto: MotoBackend
) -> None:
    first_part_sent = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        for _ in range(9):
            yield os.urandom(MiB)
        first_part_sent.set()  # asked for more only once part 1 is uploaded
        await asyncio.Event().wait()
        yield b""

    task = asyncio.create_task(s3.put("stalled.bin", stalled()))
    await asyncio.wait_for(first_part_sent.wait(), 30)
    assert len(await _open_uploads(moto, s3)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _open_uploads(moto, s3) == []


async def test_multipart_create_only_loses_to_an_existing_key(
    s3: S3ObjectStore, moto: MotoBackend
) -> None:
    await s3.put("taken", b"original", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await s3.put("taken", _stream(os.urandom(9 * MiB)), if_none_match=True)
    assert (await s3.get("taken"))[0] == b"original"
    assert await _open_uploads(moto, s3) == []


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut_after: int | None = None
    """Close the connection after this many body bytes, as a dropped connection would."""


@dataclass
class CannedS3:
    """An HTTP endpoint answering every request with ``answer(request)``, one per connection."""

    answer: Callable[[Request], Reply]
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        await asyncio.gather(*self._handlers)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:] if h)}
            await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, target, headers)
            self.requests.append(request)
            reply = self.answer(request)
            lines = [f"HTTP/1.1 {reply.status} Canned", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in reply.headers.items()]
            lines.append(f"Content-Length: {len(reply.body)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            body = reply.body if method != "HEAD" else b""
            writer.write(body[: reply.cut_after])
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()


def _error(status: int, code: str) -> Reply:
    xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>canned</Message></Error>"
    return Reply(status, {"Content-Type": "application/xml"}, xml.encode())


async def _canned_store(url: str) -> S3ObjectStore:
    settings = CloudStorageSettings(
        type="s3",
        s3=S3Settings(bucket="canned", endpoint=url),
        retry=RetrySettings(attempts=3, base_delay_seconds=0.001, max_delay_seconds=0.01),
    )
    secrets = StorageSecrets(access_key=SecretStr("AKIDCANNED"), secret_key=SecretStr(SECRET))
    store = await connect(settings, secrets)
    assert isinstance(store, S3ObjectStore)
    return store


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (403, "InvalidAccessKeyId", Misconfigured),
        (403, "SignatureDoesNotMatch", Misconfigured),
        (403, "AccessDenied", PermissionDenied),
        (404, "NoSuchBucket", Misconfigured),
    ],
)
async def test_check_maps_refusals_without_leaking_the_secret(
    status: int, code: str, expected: type[Exception]
) -> None:
    async with CannedS3(lambda _: _error(status, code)) as url:
        store = await _canned_store(url)
        try:
            with pytest.raises(expected) as caught:
                await store.check()
        finally:
            await store.close()
    assert code in str(caught.value)
    assert "canned" in str(caught.value)  # the bucket or the server's message
    assert SECRET not in str(caught.value)


async def test_throttling_is_retried_by_our_policy_only() -> None:
    canned = CannedS3(lambda _: _error(503, "SlowDown"))
    async with canned as url:
        store = await _canned_store(url)
        try:
            with pytest.raises(Unavailable, match="SlowDown"):
                await store.get("k")
        finally:
            await store.close()
    assert len(canned.requests) == 3  # RetrySettings.attempts, botocore adds none


async def test_read_resumes_where_the_connection_dropped() -> None:
    data = os.urandom(3 * MiB)
    common = {
        "ETag": '"v1"',
        "Last-Modified": "Sun, 22 Nov 2026 03:00:00 GMT",
        f"x-amz-meta-{SHA256_METADATA_KEY}": hashlib.sha256(data).hexdigest(),
    }

    def answer(request: Request) -> Reply:
        if "range" not in request.headers:
            return Reply(200, common, data, cut_after=MiB + 123)
        start = int(request.headers["range"].removeprefix("bytes=").removesuffix("-"))
        span = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        return Reply(206, common | span, data[start:])

    canned = CannedS3(answer)
    async with canned as url:
        store = await _canned_store(url)
        try:
            async with store.open("obj") as reader:  # get() reads small objects whole
                read, info = await reader.read_all(), reader.info
        finally:
            await store.close()
    assert read == data
    assert info.size == len(data)
    [first, resumed] = canned.requests
    assert "range" not in first.headers
    assert resumed.headers["range"] == f"bytes={MiB + 123}-"
    assert resumed.headers["if-match"] == '"v1"'


async def test_a_read_takes_the_connection_s_pieces_without_aiobotocore_s_read(
    s3: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment's read goes to aiohttp's buffer itself (aiobotocore's ``read(n)`` copies each
    byte once or twice more), in chunks of at least the size asked for but the last."""
    from aiobotocore.response import AioStreamingBody

    data = os.urandom(3 * MiB + 5)
    await s3.put("seg", data)

    async def refuse(*_: Any, **__: Any) -> bytes:
        raise AssertionError("read through aiobotocore's body")

    monkeypatch.setattr(AioStreamingBody, "read", refuse)
    async with s3.open("seg", chunk_size=MiB) as reader:
        chunks = [chunk async for chunk in reader]
    assert b"".join(chunks) == data
    assert all(len(chunk) >= MiB for chunk in chunks[:-1])


async def test_a_read_falls_back_to_aiobotocore_s_read_without_its_stream(
    s3: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An aiobotocore whose body hides its aiohttp stream is read through ``read(n)``."""
    import az_agent.drivers.storage.s3_reader as s3_reader

    data = os.urandom(2 * MiB + 7)
    await s3.put("seg", data)
    monkeypatch.setattr(s3_reader, "_payload_stream", lambda _body: None)
    async with s3.open("seg", chunk_size=MiB) as reader:
        chunks = [chunk async for chunk in reader]
    assert b"".join(chunks) == data
    assert [len(chunk) for chunk in chunks] == [MiB, MiB, 7]
