"""A Pinot emulator (one REALTIME, one OFFLINE table), a client on it, and raw HTTP for its
``/_emulator/`` controls."""

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
async def emulator(tmp_path: Path) -> AsyncIterator[PinotEmulator]:
    options = EmulatorOptions(seed=7, segment_size=16 << 10)
    async with PinotEmulator(tmp_path / "pinot", options=options, seed_tables=SEEDS) as started:
        yield started


@pytest.fixture
async def pinot(emulator: PinotEmulator) -> AsyncIterator[HttpPinotController]:
    async with HttpPinotController(emulator.url, timeout_seconds=10) as opened:
        yield opened


@pytest.fixture
async def http(emulator: PinotEmulator) -> AsyncIterator[RawHttp]:
    async with aiohttp.ClientSession() as session:
        yield RawHttp(session, emulator.url)
