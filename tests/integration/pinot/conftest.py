"""An emulator per test (fresh data directory), a client and a raw HTTP session on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from az_agent.drivers.pinot import HttpPinotController
from az_agent.emulators.pinot import EmulatorOptions, PinotEmulator, SeedTable
from tests.integration.pinot.support import RawHttp

SEEDS = [SeedTable("events", "REALTIME", 2), SeedTable("logs", "OFFLINE", 1)]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "pinot"


@pytest.fixture
async def emulator(data_dir: Path) -> AsyncIterator[PinotEmulator]:
    options = EmulatorOptions(seed=7, segment_size=32 << 10)
    async with PinotEmulator(data_dir, options=options, seed_tables=SEEDS) as started:
        yield started


@pytest.fixture
async def client(emulator: PinotEmulator) -> AsyncIterator[HttpPinotController]:
    async with HttpPinotController(emulator.url, timeout_seconds=10) as opened:
        yield opened


@pytest.fixture
async def http(emulator: PinotEmulator) -> AsyncIterator[RawHttp]:
    async with aiohttp.ClientSession() as session:
        yield RawHttp(session, emulator.url)
