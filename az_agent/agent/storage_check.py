"""``az-agent storage-check``: prove a bucket can carry a failover before trusting it with one.

Each probe exercises one capability the lease, the commit log and the backups rely on, under a
scratch prefix that is removed at the end. A store that silently ignores conditional writes (as
some emulators and S3-compatible servers do) fails the race probes here rather than splitting
the brain during a real failover.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from az_agent.drivers.errors import DriverError, PreconditionFailed
from az_agent.drivers.storage.base import ObjectStore

RACERS = 8


@dataclass(frozen=True, slots=True)
class ProbeResult:
    name: str
    ok: bool
    detail: str
    seconds: float

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark}  {self.name:<18} {self.detail} ({self.seconds * 1000:.0f} ms)"


class ProbeFailed(Exception):
    """A probe observed behaviour the agent cannot work with."""


class StorageProbe:
    """Runs the probes in order against ``store`` under ``<zone>/storage-check/<run id>/``."""

    def __init__(self, store: ObjectStore, zone: str, part_size: int) -> None:
        self._store = store
        self._base = f"{zone}/storage-check/{uuid.uuid4().hex[:12]}"
        self._part_size = part_size
        self._written: dict[str, str] = {}

    def _key(self, name: str) -> str:
        return f"{self._base}/{name}"

    async def run(self) -> list[ProbeResult]:
        probes: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("reach bucket", self._reach),
            ("write", self._write),
            ("read back", self._read_back),
            ("streamed write", self._streamed_write),
            ("list", self._list),
            ("create-only race", self._create_race),
            ("compare-and-swap", self._cas),
            ("delete", self._delete),
        ]
        results = []
        for name, probe in probes:
            started = time.monotonic()
            try:
                detail, ok = await probe(), True
            except (ProbeFailed, DriverError, ValueError) as exc:
                detail, ok = f"{type(exc).__name__}: {exc}", False
            results.append(ProbeResult(name, ok, detail, time.monotonic() - started))
            if name == "reach bucket" and not ok:
                break
        await self._cleanup()
        return results

    async def _reach(self) -> str:
        await self._store.check()
        return "bucket reachable with these credentials"

    async def _write(self) -> str:
        body = os.urandom(1024)
        info = await self._store.put(self._key("plain"), body)
        self._written["plain"] = hashlib.sha256(body).hexdigest()
        return f"1 KiB written, version {info.version[:16]}"

    async def _read_back(self) -> str:
        data, info = await self._store.get(self._key("plain"))
        if hashlib.sha256(data).hexdigest() != self._written.get("plain"):
            raise ProbeFailed("bytes read differ from bytes written")
        if info.sha256 is None:
            raise ProbeFailed("no checksum recorded with the object")
        return "bytes and recorded SHA-256 match"

    async def _streamed_write(self) -> str:
        size = self._part_size + 4096

        async def stream() -> AsyncIterator[bytes]:
            for start in range(0, size, 1 << 20):
                yield os.urandom(min(1 << 20, size - start))

        info = await self._store.put(self._key("streamed"), stream())
        async with self._store.open(self._key("streamed")) as reader:
            received = sum([len(chunk) async for chunk in reader])
        if received != size or info.size != size:
            raise ProbeFailed(f"wrote {size} bytes, stored {info.size}, read {received}")
        return f"{size / 2**20:.1f} MiB in parts, read back verified"

    async def _list(self) -> str:
        keys = [info.key async for info in self._store.list(self._base + "/")]
        expected = {self._key("plain"), self._key("streamed")}
        if not expected <= set(keys):
            raise ProbeFailed(f"listing shows {sorted(keys)}, expected {sorted(expected)}")
        return f"{len(keys)} objects listed"

    async def _create_race(self) -> str:
        key = self._key("race")
        results = await asyncio.gather(
            *(
                self._store.put(key, f"racer-{i}".encode(), if_none_match=True)
                for i in range(RACERS)
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        unexpected = [
            r
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, PreconditionFailed)
        ]
        if unexpected:
            raise ProbeFailed(f"racers failed unexpectedly: {unexpected[0]!r}")
        if len(winners) != 1:
            raise ProbeFailed(
                f"{len(winners)} of {RACERS} create-only writers won; exactly 1 must "
                "(this store does not honour create-only writes)"
            )
        return f"exactly 1 of {RACERS} concurrent create-only writers won"

    async def _cas(self) -> str:
        key = self._key("cas")
        first = await self._store.put(key, f"epoch=1 {uuid.uuid4()}".encode(), if_none_match=True)
        await self._store.put(key, f"epoch=2 {uuid.uuid4()}".encode(), if_match=first.version)
        try:
            await self._store.put(key, f"epoch=3 {uuid.uuid4()}".encode(), if_match=first.version)
        except PreconditionFailed:
            return "current version accepted, stale version refused"
        raise ProbeFailed("a write against a stale version was accepted")

    async def _delete(self) -> str:
        key = self._key("plain")
        await self._store.delete(key)
        remaining = [info.key async for info in self._store.list(key)]
        if remaining:
            raise ProbeFailed("object still listed after delete")
        self._written.pop("plain", None)
        return "object deleted"

    async def _cleanup(self) -> None:
        try:
            async for info in self._store.list(self._base + "/"):
                await self._store.delete(info.key)
        except DriverError:
            return  # best effort: a failed probe already explains what is wrong
