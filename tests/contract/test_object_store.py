"""One contract, every backend: the same tests run over file, S3, GCS and Azure.

Each test gets a fresh bucket on a real server (moto, fake-gcs-server, Azurite) or a temporary
directory, through the ``store`` fixture in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from az_agent.drivers.errors import CorruptObject, Misconfigured, NotFound, PreconditionFailed
from az_agent.drivers.storage.base import ObjectReader, ObjectStore
from az_agent.drivers.storage.config import CloudStorageSettings, RetrySettings, StorageSecrets
from az_agent.drivers.storage.factory import open_object_store
from az_agent.drivers.storage.streams import SizedBody
from tests.servers.base import StorageBackend
from tests.servers.flaky_proxy import FlakyProxy
from tests.servers.wrapped import WrappedStore

Bucket = tuple[CloudStorageSettings, StorageSecrets | None]
RACERS = 32
RACE_ROUNDS = 8


async def test_round_trip_records_version_and_checksum(store: ObjectStore) -> None:
    data = os.urandom(3000)
    written = await store.put("a/b/object.bin", data)
    assert written.key == "a/b/object.bin"
    assert written.size == len(data)
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    read, info = await store.get("a/b/object.bin")
    assert read == data
    assert info.version == written.version
    head = await store.head("a/b/object.bin")
    assert (head.size, head.version, head.sha256) == (len(data), written.version, written.sha256)


async def test_empty_object(store: ObjectStore) -> None:
    await store.put("empty", b"")
    assert await store.get("empty") == (b"", await store.head("empty"))


async def test_missing_keys_are_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        await store.head("nope")
    with pytest.raises(NotFound):
        await store.get("nope")
    with pytest.raises(NotFound):
        async with store.open("nope"):
            pass


async def test_create_only_refuses_existing_key(store: ObjectStore) -> None:
    first = await store.put("lease.json", b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await store.put("lease.json", b"two", if_none_match=True)
    assert (await store.get("lease.json"))[0] == b"one"
    assert (await store.head("lease.json")).version == first.version


async def test_compare_and_swap(store: ObjectStore) -> None:
    v1 = await store.put("k", b"epoch=1", if_none_match=True)
    v2 = await store.put("k", b"epoch=2", if_match=v1.version)
    assert v2.version != v1.version
    with pytest.raises(PreconditionFailed):
        await store.put("k", b"epoch=3", if_match=v1.version)
    assert (await store.get("k"))[0] == b"epoch=2"
    with pytest.raises(PreconditionFailed):
        await store.put("missing", b"x", if_match=v2.version)


async def test_concurrent_create_only_has_one_winner(store: ObjectStore) -> None:
    for round_no in range(RACE_ROUNDS):
        key = f"race/create-{round_no}"
        bodies = [f"{round_no}:{i}:{uuid.uuid4()}".encode() for i in range(RACERS)]
        results = await asyncio.gather(
            *(store.put(key, body, if_none_match=True) for body in bodies),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1, f"round {round_no}: {len(winners)} winners"
        assert all(isinstance(r, PreconditionFailed) for r in losers), losers
        assert (await store.get(key))[0] == bodies[winners[0]]


async def test_concurrent_cas_from_one_version_has_one_winner(store: ObjectStore) -> None:
    for round_no in range(RACE_ROUNDS):
        key = f"race/cas-{round_no}"
        base = await store.put(key, f"base-{round_no}".encode(), if_none_match=True)
        bodies = [f"{round_no}:{i}:{uuid.uuid4()}".encode() for i in range(RACERS)]
        results = await asyncio.gather(
            *(store.put(key, body, if_match=base.version) for body in bodies),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
        assert len(winners) == 1, f"round {round_no}: {len(winners)} winners"
        assert all(
            isinstance(r, PreconditionFailed) for r in results if isinstance(r, BaseException)
        )
        assert (await store.get(key))[0] == bodies[winners[0]]


async def _pattern_stream(total: int, chunk: int) -> AsyncIterator[bytes]:
    block = hashlib.sha256(b"seed").digest() * (chunk // 32)
    sent = 0
    while sent < total:
        piece = block[: min(chunk, total - sent)]
        sent += len(piece)
        yield piece


async def test_large_streamed_put_and_get_keep_memory_flat(store: ObjectStore) -> None:
    size = 64 << 20
    expected = hashlib.sha256()
    async for piece in _pattern_stream(size, 1 << 20):
        expected.update(piece)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        info = await store.put("big/stream.bin", _pattern_stream(size, 1 << 20))
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = hashlib.sha256()
        received = 0
        async with store.open("big/stream.bin") as reader:
            async for chunk in reader:
                got.update(chunk)
                received += len(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert info.size == size == received
    assert info.sha256 == expected.hexdigest() == got.hexdigest()
    assert put_peak < size // 3, f"put held {put_peak / 2**20:.1f} MiB of a 64 MiB stream"
    assert get_peak < size // 3, f"get held {get_peak / 2**20:.1f} MiB of a 64 MiB object"


async def test_list_paginates_past_a_thousand_keys(store: ObjectStore) -> None:
    keys = [f"many/{i:05d}" for i in range(1050)]
    gate = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with gate:
            await store.put(key, key.encode())

    await asyncio.gather(*(put(k) for k in keys))
    await store.put("other/x", b"x")
    listed = [info.key async for info in store.list("many/")]
    assert listed == keys
    small_pages = [info.key async for info in store.list("many/00", page_size=100)]
    assert small_pages == [k for k in keys if k.startswith("many/00")]
    assert [info.key async for info in store.list("nothing/")] == []


async def test_list_reports_sizes_and_versions(store: ObjectStore) -> None:
    written = await store.put("dir/one", b"12345")
    [info] = [i async for i in store.list("dir/")]
    assert (info.key, info.size, info.version) == ("dir/one", 5, written.version)


class ReplacedUnderFirstReader(WrappedStore):
    """Replaces ``key`` once, after the first reader looked it up and before it reads."""

    def __init__(self, inner: ObjectStore, newer: bytes) -> None:
        super().__init__(inner)
        self.newer = newer
        self.replaced = False

    def open(
        self, key: str, *, chunk_size: int = 1 << 20
    ) -> AbstractAsyncContextManager[ObjectReader]:
        return self._open(key, chunk_size)

    @asynccontextmanager
    async def _open(self, key: str, chunk_size: int) -> AsyncIterator[ObjectReader]:
        async with self.inner.open(key, chunk_size=chunk_size) as reader:
            if not self.replaced:
                self.replaced = True
                await self.inner.put(key, self.newer)
            yield reader


async def test_get_of_an_object_replaced_under_the_read_returns_one_whole_version(
    store: ObjectStore,
) -> None:
    await store.put("record", b"version one")
    racing = ReplacedUnderFirstReader(store, b"version two, longer")
    data, info = await racing.get("record")
    assert racing.replaced
    assert data in (b"version one", b"version two, longer")
    assert info.size == len(data)
    assert (await store.get("record"))[0] == b"version two, longer"


async def test_delete(store: ObjectStore) -> None:
    v1 = await store.put("gone", b"x")
    await store.delete("gone")
    with pytest.raises(NotFound):
        await store.head("gone")
    await store.delete("gone")  # deleting a missing key is not an error
    v2 = await store.put("kept", b"y")
    with pytest.raises(PreconditionFailed):
        await store.delete("kept", if_match=v1.version)
    await store.delete("kept", if_match=v2.version)
    with pytest.raises(NotFound):
        await store.head("kept")


async def test_corrupted_object_is_detected_on_read(
    store: ObjectStore, backend: StorageBackend, bucket: Bucket
) -> None:
    data = os.urandom(10_000)
    await store.put("rot/segment.tar.gz", data)
    await backend.corrupt(bucket[0], bucket[1], "rot/segment.tar.gz")
    with pytest.raises(CorruptObject):
        await store.get("rot/segment.tar.gz")


async def test_prefix_isolates_keys(bucket: Bucket) -> None:
    settings, secrets = bucket
    plain = await open_object_store(settings, secrets)
    scoped = await open_object_store(settings.model_copy(update={"prefix": "team-a"}), secrets)
    try:
        await scoped.put("az1/lease.json", b"scoped")
        await plain.put("az1/lease.json", b"plain")
        assert (await scoped.get("az1/lease.json"))[0] == b"scoped"
        assert [i.key async for i in scoped.list()] == ["az1/lease.json"]
        assert sorted([i.key async for i in plain.list()]) == [
            "az1/lease.json",
            "team-a/az1/lease.json",
        ]
    finally:
        await plain.close()
        await scoped.close()


async def test_only_gcs_spaces_writes_to_one_object(bucket: Bucket) -> None:
    """The lease paces its writes by this: GCS allows about one a second per object."""
    settings, secrets = bucket
    scoped = settings.model_copy(update={"prefix": "team-a"})
    async with await open_object_store(scoped, secrets) as store:
        assert store.write_spacing == (1.0 if settings.type == "gcs" else 0.0)


def _missing_bucket(settings: CloudStorageSettings) -> CloudStorageSettings:
    name = f"missing-{uuid.uuid4().hex[:12]}"
    if settings.type == "s3":
        return settings.model_copy(update={"s3": settings.s3.model_copy(update={"bucket": name})})
    if settings.type == "gcs":
        return settings.model_copy(update={"gcs": settings.gcs.model_copy(update={"bucket": name})})
    if settings.type == "azure":
        azure = settings.azure.model_copy(update={"container": name})
        return settings.model_copy(update={"azure": azure})
    blocker = os.path.join(settings.file.path + "-blocker")
    os.makedirs(os.path.dirname(blocker), exist_ok=True)
    with open(blocker, "w") as handle:
        handle.write("not a directory")
    return settings.model_copy(update={"file": settings.file.model_copy(update={"path": blocker})})


async def test_missing_bucket_is_misconfigured_at_check(bucket: Bucket) -> None:
    settings, secrets = bucket
    store = await open_object_store(_missing_bucket(settings), secrets)
    try:
        with pytest.raises(Misconfigured):
            await store.check()
    finally:
        await store.close()


async def test_retries_survive_throttling(network_backend: StorageBackend) -> None:
    backend = network_backend
    settings, secrets = await backend.new_bucket()
    proxy = FlakyProxy(backend.endpoint, backend.name, failure_rate=0.2)
    await proxy.start()
    fast_retry = RetrySettings(attempts=12, base_delay_seconds=0.005, max_delay_seconds=0.05)
    flaky = backend.through(settings, proxy.url).model_copy(update={"retry": fast_retry})
    store = await open_object_store(flaky, secrets)
    try:
        await store.check()
        bodies = {f"t/{i:03d}": os.urandom(512) for i in range(60)}
        await asyncio.gather(*(store.put(k, v) for k, v in bodies.items()))
        big = os.urandom(12 << 20)
        await store.put("t/big", _chunks(big))
        await store.put("t/sized", SizedBody(_chunks(big), len(big)))  # S3: one PUT, resent
        created = await store.put("t/lease", b"lease", if_none_match=True)
        await store.put("t/lease", b"lease-2", if_match=created.version)
        listed = [i.key async for i in store.list("t/", page_size=7)]
        assert listed == sorted([*bodies, "t/big", "t/lease", "t/sized"])
        for key, body in bodies.items():
            assert (await store.get(key))[0] == body
        assert (await store.get("t/big"))[0] == big
        assert (await store.get("t/sized"))[0] == big
        assert (await store.get("t/lease"))[0] == b"lease-2"
        await store.delete("t/000")
        with pytest.raises(NotFound):
            await store.head("t/000")
    finally:
        await store.close()
        await proxy.stop()
    assert proxy.injected > 10, f"only {proxy.injected} failures injected"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1 << 20):
        yield data[start : start + (1 << 20)]
