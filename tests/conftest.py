"""Fixtures shared by every test: storage servers, a fresh bucket per test, two PostgreSQL
servers (one per zone), leak checks."""

from __future__ import annotations

import asyncio
import importlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.config import CloudStorageSettings, StorageSecrets
from az_agent.drivers.storage.factory import open_object_store
from tests.servers.base import StorageBackend
from tests.servers.kubernetes import KubernetesApiServer
from tests.servers.postgres import PostgresServer

BACKENDS = {
    "file": "tests.servers.filestore:FileBackend",
    "s3": "tests.servers.moto:MotoBackend",
    "gcs": "tests.servers.fakegcs:FakeGcsBackend",
    "azure": "tests.servers.azurite:AzuriteBackend",
}


NETWORK_BACKENDS = [name for name in BACKENDS if name != "file"]


class BackendPool:
    """Starts each storage server once, on first use, and stops them all at the end."""

    def __init__(self) -> None:
        self._started: dict[str, StorageBackend] = {}

    def get(self, name: str) -> StorageBackend:
        if name not in self._started:
            module_name, class_name = BACKENDS[name].split(":")
            backend: StorageBackend = getattr(importlib.import_module(module_name), class_name)()
            backend.start()
            self._started[name] = backend
        return self._started[name]

    def stop_all(self) -> None:
        for backend in self._started.values():
            backend.stop()


@pytest.fixture(scope="session")
def backend_pool() -> Iterator[BackendPool]:
    pool = BackendPool()
    yield pool
    pool.stop_all()


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, backend_pool: BackendPool) -> StorageBackend:
    """Each storage backend in turn; tests using it run once per backend."""
    return backend_pool.get(request.param)


@pytest.fixture(params=NETWORK_BACKENDS)
def network_backend(request: pytest.FixtureRequest, backend_pool: BackendPool) -> StorageBackend:
    """Each backend reached over HTTP (all but ``file``), for network fault injection."""
    return backend_pool.get(request.param)


@pytest.fixture
async def bucket(
    backend: StorageBackend,
) -> tuple[CloudStorageSettings, StorageSecrets | None]:
    """Settings and secrets of a fresh, empty bucket on the current backend."""
    return await backend.new_bucket()


@pytest.fixture
async def store(
    bucket: tuple[CloudStorageSettings, StorageSecrets | None],
) -> AsyncIterator[ObjectStore]:
    """A connected store on a fresh bucket, closed after the test."""
    settings, secrets = bucket
    opened = await open_object_store(settings, secrets)
    await opened.check()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running: every background task needs an owner."""
    before = set(asyncio.all_tasks())
    yield
    for _ in range(3):
        await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    ]
    for task in leaked:
        task.cancel()
    assert not leaked, f"test left tasks behind: {[t.get_coro() for t in leaked]}"


@pytest.fixture(scope="session")
async def pg_servers() -> AsyncIterator[tuple[PostgresServer, PostgresServer]]:
    """Zone 1 and zone 2, started side by side in threads (initdb + start is ~1 s each)."""
    servers = (PostgresServer("pg-az1"), PostgresServer("pg-az2"))
    try:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
        yield servers
    finally:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in servers))


KUBE_BUILD_WAIT_SECONDS = 40 * 60


def wait_for_kube_build() -> None:
    """When ``scripts/test.sh`` builds Kubernetes in the background, wait until it has ended
    (its exit status in ``$AZ_AGENT_KUBE_BUILD_STATUS``); a failed build fails the test with
    the end of its log."""
    status_file = os.environ.get("AZ_AGENT_KUBE_BUILD_STATUS")
    if not status_file:
        return
    deadline = time.monotonic() + KUBE_BUILD_WAIT_SECONDS
    while not (status := Path(status_file).read_text().strip()):
        if time.monotonic() > deadline:
            raise AssertionError(f"the Kubernetes build did not end in {KUBE_BUILD_WAIT_SECONDS}s")
        time.sleep(2)
    if status != "0":
        log = Path(os.environ.get("AZ_AGENT_KUBE_BUILD_LOG", "/dev/null")).read_text()
        raise AssertionError(f"scripts/kube-build.sh failed ({status}):\n{log[-3000:]}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the real Kubernetes API server run last: its build may still be running."""
    items.sort(key=lambda item: "kube_apiserver" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
async def kube_apiserver() -> AsyncIterator[KubernetesApiServer]:
    """A real Kubernetes API server for the session (see tests/servers/kubernetes.py); it fails,
    never skips, when scripts/kube-build.sh has not built it."""
    await asyncio.to_thread(wait_for_kube_build)
    server = KubernetesApiServer()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
def zone1(pg_servers: tuple[PostgresServer, PostgresServer]) -> PostgresServer:
    return pg_servers[0]


@pytest.fixture
def zone2(pg_servers: tuple[PostgresServer, PostgresServer]) -> PostgresServer:
    return pg_servers[1]


@pytest.fixture
def dbname() -> str:
    """A database name no other test uses."""
    return f"db_{uuid.uuid4().hex[:10]}"
