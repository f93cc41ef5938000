"""Preconditions on multipart uploads, against a server that enforces them: SeaweedFS.

moto 5.2 ignores ``If-Match`` on ``CompleteMultipartUpload``, so a compare-and-swap of a body
larger than one part passes there even when it should lose. These tests hold the driver to
the S3 semantics on SeaweedFS, which honours it: the condition must travel on the completion,
a losing upload must leave the object as it was, and no upload may be left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from az_agent.drivers.errors import DriverError, NotFound, PreconditionFailed
from az_agent.drivers.storage.s3 import S3ObjectStore, connect
from az_agent.drivers.storage.streams import SizedBody
from tests.servers.seaweedfs import SeaweedFSBackend

MiB = 1 << 20
PART = 8 * MiB
"""The driver's default part size; every body below is larger, so it goes as a multipart."""


@pytest.fixture
async def stores(seaweedfs: SeaweedFSBackend) -> AsyncIterator[tuple[S3ObjectStore, S3ObjectStore]]:
    """Two agents' stores on one fresh bucket: ``ours`` and a ``rival`` writing beside it."""
    settings, secrets = await seaweedfs.new_bucket()
    opened: list[S3ObjectStore] = []
    try:
        for _ in range(2):
            store = await connect(settings, secrets)
            assert isinstance(store, S3ObjectStore)
            opened.append(store)
        assert opened[0]._part_size == PART
        yield opened[0], opened[1]
    finally:
        for store in opened:
            await store.close()


async def _open_uploads(seaweedfs: SeaweedFSBackend, store: S3ObjectStore) -> list[Any]:
    async with seaweedfs.client() as client:
        reply = await client.list_multipart_uploads(Bucket=store._bucket)
    uploads: list[Any] = reply.get("Uploads", [])
    return uploads


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), MiB):
        yield data[start : start + MiB]


async def test_multipart_cas_with_a_stale_version_is_refused(
    stores: tuple[S3ObjectStore, S3ObjectStore], seaweedfs: SeaweedFSBackend
) -> None:
    ours, _ = stores
    v1 = await ours.put("lease", b"epoch=1", if_none_match=True)
    v2 = await ours.put("lease", b"epoch=2", if_match=v1.version)
    body = os.urandom(2 * PART + MiB)  # three parts

    with pytest.raises(PreconditionFailed):
        await ours.put("lease", _stream(body), if_match=v1.version)
    assert (await ours.get("lease"))[0] == b"epoch=2"
    assert (await ours.head("lease")).version == v2.version
    assert await _open_uploads(seaweedfs, ours) == []

    # The same multipart write against the current version goes through.
    v3 = await ours.put("lease", _stream(body), if_match=v2.version)
    read, info = await ours.get("lease")
    assert read == body
    assert info.version == v3.version != v2.version


async def test_multipart_cas_loses_to_a_write_that_lands_mid_upload(
    stores: tuple[S3ObjectStore, S3ObjectStore], seaweedfs: SeaweedFSBackend
) -> None:
    ours, rival = stores
    base = await ours.put("seg", b"base", if_none_match=True)
    rival_version: list[str] = []

    async def body_raced_by_the_rival() -> AsyncIterator[bytes]:
        for index in range(20):
            if index == 12:  # part 1 is uploaded, part 2 being read: the upload is open
                assert len(await _open_uploads(seaweedfs, ours)) == 1
                rival_version.append((await rival.put("seg", b"rival")).version)
            yield os.urandom(MiB)

    with pytest.raises(PreconditionFailed):
        await ours.put("seg", body_raced_by_the_rival(), if_match=base.version)
    assert rival_version, "the rival never wrote: the body was not read to its end"
    read, info = await ours.get("seg")
    assert (read, info.version) == (b"rival", rival_version[0])
    assert await _open_uploads(seaweedfs, ours) == []


async def test_multipart_create_only_onto_an_existing_key_is_refused(
    stores: tuple[S3ObjectStore, S3ObjectStore], seaweedfs: SeaweedFSBackend
) -> None:
    ours, _ = stores
    first = await ours.put("taken", b"original", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await ours.put("taken", _stream(os.urandom(PART + MiB)), if_none_match=True)
    assert (await ours.get("taken"))[0] == b"original"
    assert (await ours.head("taken")).version == first.version
    assert await _open_uploads(seaweedfs, ours) == []


class CutAfterHeaders:
    """A TCP relay to the server that, once, forwards a PUT of ``key`` up to the end of its
    headers and then drops both connections: the request body never arrives."""

    def __init__(self, upstream: str, key: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.marker = f"PUT /{key}".encode()
        self.cut = False
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        server, to_server = await asyncio.open_connection(*self.upstream)
        try:
            await asyncio.gather(
                self._forward(client, to_server, cutting=True),
                self._forward(server, to_client, cutting=False),
            )
        finally:
            for writer in (to_server, to_client):
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _forward(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, cutting: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(1 << 16):
                at = data.find(self.marker) if cutting and not self.cut else -1
                if at >= 0 and (end := data.find(b"\r\n\r\n", at)) >= 0:
                    self.cut = True
                    sink.write(data[: end + 4])
                    await sink.drain()
                    raise ConnectionResetError("cut after the headers")
                sink.write(data)
                await sink.drain()
        sink.close()


async def test_a_put_whose_body_never_arrives_leaves_nothing(
    seaweedfs: SeaweedFSBackend,
) -> None:
    """SeaweedFS stores a PUT cut after its headers as an empty object with the headers'
    metadata; the driver's request checksum makes it refuse instead, so the retried create-only
    put of a log entry lands whole rather than losing to garbage."""
    settings, secrets = await seaweedfs.new_bucket()
    key = f"{settings.s3.bucket}/az1/log/00000000000000000001.json"
    relay = CutAfterHeaders(seaweedfs.endpoint, key)
    store = await connect(seaweedfs.through(settings, await relay.start()), secrets)
    try:
        body = b'{"seq": 1, "kind": "fence"}' * 8
        await store.put("az1/log/00000000000000000001.json", body, if_none_match=True)
        assert relay.cut, "the relay cut the first attempt"
        data, _ = await store.get("az1/log/00000000000000000001.json")
        assert data == body
    finally:
        await store.close()
        await relay.stop()


async def test_a_single_put_whose_bytes_change_on_the_way_is_refused(
    stores: tuple[S3ObjectStore, S3ObjectStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single ``PutObject`` carries the SHA-256 it records as its request checksum (no
    Content-MD5 any more): the server must refuse bytes that differ from it, and store nothing."""
    ours, _ = stores
    original = ours._client.put_object

    async def altering(**params: Any) -> Any:
        sent = bytearray(params["Body"].read())
        sent[len(sent) // 2] ^= 0xFF  # one byte flipped after the digest was taken
        params["Body"] = io.BytesIO(bytes(sent))
        return await original(**params)

    monkeypatch.setattr(ours._client, "put_object", altering)
    with pytest.raises(DriverError, match="BadDigest"):
        await ours.put("altered.bin", SizedBody(_stream(os.urandom(3 * MiB)), 3 * MiB))
    with pytest.raises(NotFound):
        await ours.head("altered.bin")


async def test_a_spooled_part_whose_bytes_change_on_the_way_is_refused(
    stores: tuple[S3ObjectStore, S3ObjectStore],
    seaweedfs: SeaweedFSBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each part of a spooled body carries its CRC32 (no Content-MD5), on the part and again in
    the completion's list: the server must refuse a part that differs from it (SeaweedFS checks
    either), and the upload is aborted with nothing stored."""
    ours, _ = stores
    original = ours._client.upload_part

    async def altering(**params: Any) -> Any:
        if params["PartNumber"] == 2:
            sent = bytearray(params["Body"].read())
            sent[-1] ^= 0xFF
            params["Body"] = io.BytesIO(bytes(sent))
        return await original(**params)

    monkeypatch.setattr(ours._client, "upload_part", altering)
    size = 4 * PART
    with pytest.raises(DriverError, match="BadDigest"):
        await ours.put("altered-part.bin", SizedBody(_stream(os.urandom(size)), size))
    with pytest.raises(NotFound):
        await ours.head("altered-part.bin")
    assert await _open_uploads(seaweedfs, ours) == []
