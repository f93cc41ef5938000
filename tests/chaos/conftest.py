"""The chaos tier's S3 server: one SeaweedFS for the session (a missing ``weed`` is an error)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.runner import s3_server
from tests.servers.base import StorageBackend


@pytest.fixture(scope="session")
def chaos_s3() -> Iterator[StorageBackend]:
    server = s3_server("seaweedfs")
    server.start()
    try:
        yield server
    finally:
        server.stop()
