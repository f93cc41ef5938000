"""Dumpers and a file store for the PostgreSQL driver tests (the servers: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from az_agent.drivers.postgres.dumper import PgDumper
from az_agent.drivers.storage.file import FileObjectStore
from tests.integration.postgres.helpers import dumper_for
from tests.servers.postgres import PostgresServer


@pytest.fixture
def dumper1(zone1: PostgresServer) -> PgDumper:
    return dumper_for(zone1)


@pytest.fixture
def dumper2(zone2: PostgresServer) -> PgDumper:
    return dumper_for(zone2)


@pytest.fixture
def file_store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "bucket")
