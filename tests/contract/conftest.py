"""The contract suite's backends: every one of ``tests/conftest.py``, plus SeaweedFS.

SeaweedFS is a second S3 server, beside moto, that honours every precondition (moto ignores
``If-Match`` on ``CompleteMultipartUpload``). It is added here rather than to the shared
``BACKENDS`` so that only the object-store contract pays for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest

from tests.conftest import BACKENDS, NETWORK_BACKENDS, BackendPool
from tests.servers.base import StorageBackend
from tests.servers.seaweedfs import SeaweedFSBackend

SEAWEEDFS = "seaweedfs"


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFSBackend]:
    """One SeaweedFS server for the session; a missing ``weed`` binary is an error, not a skip."""
    server = SeaweedFSBackend()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _pick(request: pytest.FixtureRequest, backend_pool: BackendPool) -> StorageBackend:
    if request.param == SEAWEEDFS:
        return cast(SeaweedFSBackend, request.getfixturevalue(SEAWEEDFS))
    return backend_pool.get(request.param)


@pytest.fixture(params=[*BACKENDS, SEAWEEDFS])
def backend(request: pytest.FixtureRequest, backend_pool: BackendPool) -> StorageBackend:
    """Each storage backend in turn, SeaweedFS included."""
    return _pick(request, backend_pool)


@pytest.fixture(params=[*NETWORK_BACKENDS, SEAWEEDFS])
def network_backend(request: pytest.FixtureRequest, backend_pool: BackendPool) -> StorageBackend:
    """Each backend reached over HTTP, SeaweedFS included."""
    return _pick(request, backend_pool)
