"""How the backup loop finds new segments: scans of every segment's metadata now and then, and
between them a listing of names plus the metadata of new names only."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.drivers.pinot import PinotSettings, SegmentMetadata, TableRef, TableType
from az_agent.emulators.pinot import PinotEmulator
from az_agent.emulators.pinot.factory import SegmentPlan, build_segment
from az_agent.state import SystemClock
from tests.integration.agent_pinot.conftest import Bucket, DeletingController, lead, running
from tests.integration.agent_pinot.test_segment_backup import (
    ZONE,
    polled,
    produce,
    wait_backed_up,
)

LOGS = TableRef("logs", TableType.OFFLINE)


class ReadCounter(DeletingController):
    """Counts scans (every segment's metadata), listings and single-segment reads, per table."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads: Counter[str] = Counter()
        self.read_names: list[tuple[str, str]] = []

    async def segments(self, table: TableRef) -> list[SegmentMetadata]:
        self.reads[f"scan {table}"] += 1
        return await super().segments(table)

    async def segment_names(self, table: TableRef) -> list[str]:
        self.reads[f"list {table}"] += 1
        return await super().segment_names(table)

    async def segment(self, table: TableRef, segment: str) -> SegmentMetadata:
        self.reads[f"read {table}"] += 1
        self.read_names.append((table.name_with_type, segment))
        return await super().segment(table, segment)


async def test_polls_between_scans_read_the_metadata_of_new_names_only(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController
) -> None:
    await produce(source, "logs_OFFLINE", 5)
    session = await lead(file_bucket.store, ZONE)
    async with ReadCounter(source.url) as counter:
        settings = PinotSettings(
            poll_interval_seconds=0.05, concurrency=2, refresh_scan_interval_seconds=3600
        )
        loop = SegmentBackupLoop(counter, settings, session.metrics, SystemClock())
        async with running(loop.run(session)):
            await wait_backed_up(session, pinot)
            assert counter.reads["scan logs_OFFLINE"] == 1  # the leader's first poll
            await polled(counter, 3)
            counter.read_names.clear()
            new = await produce(source, "logs_OFFLINE", 2)
            await wait_backed_up(session, pinot)
            await polled(counter, 2)
        assert counter.reads["scan logs_OFFLINE"] == 1
        assert counter.reads["list logs_OFFLINE"] >= 5
        # nothing backed up is read again (the consuming segments of events are, every poll)
        assert sorted({n for t, n in counter.read_names if t == "logs_OFFLINE"}) == sorted(new)
    assert session.catalog.segment_count == 7


async def test_a_refresh_waits_for_the_next_scan_and_a_flush_scans(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, tmp_path: Path
) -> None:
    [name] = await produce(source, "logs_OFFLINE")
    session = await lead(file_bucket.store, ZONE)
    async with ReadCounter(source.url) as counter:
        settings = PinotSettings(
            poll_interval_seconds=0.05, concurrency=2, refresh_scan_interval_seconds=3600
        )
        loop = SegmentBackupLoop(counter, settings, session.metrics, SystemClock())
        async with running(loop.run(session)):
            await wait_backed_up(session, pinot)
            old = session.catalog.segment("logs_OFFLINE", name)
            assert old is not None
            now = int(time.time() * 1000)
            plan = SegmentPlan(name, "logs", 30_000, 4321, now, now - 60_000, now, 10)
            tarball = tmp_path / "refresh.tar.gz"
            await asyncio.to_thread(build_segment, plan, tarball)
            await pinot.upload_segment(LOGS, tarball.read_bytes(), segment_name=name)
            await polled(counter, 3)
            assert session.catalog.segment("logs_OFFLINE", name) == old  # not seen yet
        assert await loop.flush(session) == 1
    new = session.catalog.segment("logs_OFFLINE", name)
    assert new is not None
    assert new.crc != old.crc
    assert counter.reads["scan logs_OFFLINE"] == 2  # the first poll and the flush
