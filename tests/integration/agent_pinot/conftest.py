"""Emulated Pinot controllers, a real storage server and real state objects for the segment tests.

Each test gets fresh emulators and a fresh bucket (moto for ``s3``, a directory for ``file``);
:func:`lead` takes a zone's lease, writes the fence and loads the catalog exactly as the agent
does before it hands a :class:`LeaderSession` to its loops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.errors import Unavailable
from az_agent.drivers.pinot import HttpPinotController, TableRef, UploadBody, UploadResult
from az_agent.drivers.pinot.models import JsonObject, TableType
from az_agent.drivers.storage.base import (
    DEFAULT_CHUNK_SIZE,
    Body,
    ObjectInfo,
    ObjectReader,
    ObjectStore,
)
from az_agent.drivers.storage.config import CloudStorageSettings, StorageSecrets
from az_agent.drivers.storage.factory import open_object_store
from az_agent.emulators.pinot import EmulatorOptions, PinotEmulator, SeedTable
from az_agent.state import (
    LeaseKeeper,
    LeaseSettings,
    LogWriter,
    SystemClock,
    load_catalog,
    new_holder_id,
)
from tests.conftest import BackendPool
from tests.integration.pinot.support import RawHttp
from tests.servers.base import StorageBackend
from tests.servers.wrapped import WrappedStore

SEEDS = [SeedTable("events", "REALTIME", 2), SeedTable("logs", "OFFLINE", 1)]
OPTIONS = EmulatorOptions(seed=11, segment_size=24 << 10)
LEASE = LeaseSettings(ttl_seconds=300, renew_deadline_seconds=240, retry_period_seconds=2)


class DeletingController(HttpPinotController):
    """The controller client plus ``delete_segment`` (which the restore uses when it can),
    counting the uploads started, per segment (an upload cut short by a crash may still have
    completed in the controller, so starts are what bounds the work done twice), and the calls
    only a backup loop makes (so a test can tell that the loop ran, and how often)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout_seconds=10)
        self.base = url
        self.uploads: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        """``list_tables`` opens every poll round, ``table_configs`` every comparison of a
        table's documents with the catalog; the tests' own helpers call neither."""

    async def list_tables(self, table_type: TableType | None = None) -> list[TableRef]:
        self.calls["list_tables"] += 1
        return await super().list_tables(table_type)

    async def table_configs(
        self, table: str, table_type: TableType | None = None
    ) -> dict[TableType, JsonObject]:
        self.calls["table_configs"] += 1
        return await super().table_configs(table, table_type)

    async def delete_segment(self, table: TableRef, segment: str) -> None:
        path = f"{self.base}/segments/{table.name_with_type}/{quote(segment, safe='')}"
        async with aiohttp.ClientSession() as session, session.delete(path) as response:
            assert response.status == 200, await response.text()

    async def upload_segment(
        self,
        table: TableRef,
        body: UploadBody,
        *,
        segment_name: str,
        allow_refresh: bool = True,
        if_match_crc: int | None = None,
    ) -> UploadResult:
        self.uploads[segment_name] += 1
        return await super().upload_segment(
            table,
            body,
            segment_name=segment_name,
            allow_refresh=allow_refresh,
            if_match_crc=if_match_crc,
        )


class CountingStore(WrappedStore):
    """Delegates to ``inner`` and counts completed puts per key; hooks may block a put before
    it starts or after it completed (to stop an agent at an exact point)."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.puts: Counter[str] = Counter()
        self.active = 0
        self.before_put: Callable[[str], Awaitable[None]] | None = None
        self.after_put: Callable[[str], Awaitable[None]] | None = None
        self.failing_reads: Counter[str] = Counter()
        """Reads of a key to fail with ``Unavailable`` (as a throttled bucket would)."""

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        if self.before_put is not None:
            await self.before_put(key)
        self.active += 1
        try:
            info = await self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match)
            self.puts[key] += 1
            if self.after_put is not None:
                await self.after_put(key)
        finally:
            self.active -= 1
        return info

    def open(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self._open(key, chunk_size)

    @contextlib.asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        if self.failing_reads[key] > 0:
            self.failing_reads[key] -= 1
            raise Unavailable(f"{key}: injected: slow down")
        async with self.inner.open(key, chunk_size=chunk_size) as reader:
            yield reader

    def segment_puts(self) -> Counter[str]:
        return Counter({k: n for k, n in self.puts.items() if "/segments/" in k})


@dataclass
class Bucket:
    backend: StorageBackend
    settings: CloudStorageSettings
    secrets: StorageSecrets | None
    store: CountingStore


async def lead(
    store: ObjectStore, zone: str, *, force: bool = False, clock: SystemClock | None = None
) -> LeaderSession:
    """Become the zone's leader as the agent does: lease, fence entry, catalog from the bucket.
    ``clock`` (default the system's) times the lease and the entries."""
    clock = clock or SystemClock()
    keeper = LeaseKeeper(store, zone, new_holder_id(f"{zone}-test"), LEASE, clock=clock)
    if force:
        await keeper.take_over(force=True)
    else:
        assert await keeper.tick()
    epoch = keeper.epoch
    assert epoch is not None
    writer = LogWriter(
        store,
        zone,
        epoch,
        keeper.holder_id,
        clock=clock,
        guard=lambda: keeper.is_leader and keeper.epoch == epoch,
    )
    await writer.write_fence(reason="test leader")
    catalog = await load_catalog(store, zone)
    return LeaderSession(zone, epoch, store, writer, catalog, AgentMetrics(zone), clock)


@contextlib.asynccontextmanager
async def running(work: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``work`` as a task for the body of the block; cancelled and awaited at its end."""
    task = asyncio.ensure_future(work)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _bucket(backend: StorageBackend) -> AsyncIterator[Bucket]:
    settings, secrets = await backend.new_bucket()
    inner = await open_object_store(settings, secrets)
    store = CountingStore(inner)
    try:
        yield Bucket(backend, settings, secrets, store)
    finally:
        await store.close()


@pytest.fixture
async def s3_bucket(backend_pool: BackendPool) -> AsyncIterator[Bucket]:
    async for bucket in _bucket(backend_pool.get("s3")):
        yield bucket


@pytest.fixture
async def file_bucket(backend_pool: BackendPool) -> AsyncIterator[Bucket]:
    async for bucket in _bucket(backend_pool.get("file")):
        yield bucket


@pytest.fixture(params=["s3", "file"])
async def any_bucket(
    request: pytest.FixtureRequest, backend_pool: BackendPool
) -> AsyncIterator[Bucket]:
    async for bucket in _bucket(backend_pool.get(request.param)):
        yield bucket


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[PinotEmulator]:
    async with PinotEmulator(tmp_path / "zone1", options=OPTIONS, seed_tables=SEEDS) as started:
        yield started


@pytest.fixture
async def pinot(source: PinotEmulator) -> AsyncIterator[DeletingController]:
    async with DeletingController(source.url) as client:
        yield client


@pytest.fixture
async def http(source: PinotEmulator) -> AsyncIterator[RawHttp]:
    async with aiohttp.ClientSession() as session:
        yield RawHttp(session, source.url)
