"""Helpers shared by the Pinot client/emulator tests: raw HTTP calls, polling, CRC by hand."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import tarfile
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")


class RawHttp:
    """Plain aiohttp calls, to check status codes and bodies exactly as the wire has them."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, str, Any]:
        """Status, content type and body (JSON-decoded when it is JSON)."""
        async with self.session.request(method, self.base + path, **kwargs) as response:
            text = await response.text()
            body: Any = text
            if response.content_type == "application/json":
                body = json.loads(text)
            return response.status, response.content_type, body

    async def text(self, path: str) -> str:
        """The body of a GET exactly as sent."""
        async with self.session.get(self.base + path) as response:
            assert response.status == 200
            return await response.text()

    async def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        status, _, body = await self.call(method, "/_emulator" + path, **kwargs)
        assert status == 200, body
        return body


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], within: float = 10.0
) -> T:
    """Poll ``probe`` until ``accept`` holds, as a client of an asynchronous API must."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await probe()
        if accept(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s; last value: {value!r}")
        await asyncio.sleep(0.02)


def reference_crc(index_dir: Path) -> int:
    """The §12.5 sketch of ``CrcUtils.computeCrc``, written independently of the code under test."""
    paths = sorted(
        os.path.join(root, name)
        for root, _, files in os.walk(index_dir)
        for name in files
        if name != "creation.meta" and not name.endswith(".crc")
    )
    crc = 1
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 16), b""):
                crc = zlib.adler32(chunk, crc)
    return crc


def untar_and_check(tarball: bytes | Path, target: Path) -> tuple[int, int, int | None, int]:
    """Extract a segment tarball; (crc in creation.meta, its creation time, its data CRC,
    CRC recomputed from the files)."""
    source = io.BytesIO(tarball) if isinstance(tarball, bytes) else tarball.open("rb")
    with source, tarfile.open(fileobj=source, mode="r:gz") as archive:
        first = archive.getmembers()[0]
        assert first.isdir(), "a segment tarball starts with its directory"
        archive.extractall(target, filter="data")
    index_dir = target / first.name
    meta_path = index_dir / "v3" / "creation.meta"
    raw = meta_path.read_bytes()
    assert len(raw) in (16, 24)
    crc, created = struct.unpack(">qq", raw[:16])
    data_crc = struct.unpack(">q", raw[16:])[0] if len(raw) == 24 else None
    return crc, created, data_crc, reference_crc(index_dir)
