"""Pinot's retention followed in the bucket: deletions confirmed over two polls, rehydration as
of before and after them, deleted segments purged after their grace, checkpoints pruned, orphans
swept; against the Pinot emulator and a real store (file and S3)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from az_agent.agent.backup.retention import RetentionLoop
from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.config import BucketRetentionSettings
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.restore.rehydrate import Rehydrator, plan_rehydration, restore_table_configs
from az_agent.drivers.errors import NotFound
from az_agent.drivers.pinot import PinotSettings, TableRef, TableType
from az_agent.drivers.storage.base import ObjectStore
from az_agent.emulators.pinot import PinotEmulator
from az_agent.state import (
    LogEntry,
    SegmentDeletedPayload,
    SegmentPayload,
    SystemClock,
    load_catalog,
    read_entries,
)
from az_agent.state.keys import segment_key
from az_agent.state.log import checkpoint_seqs, entry_exists
from tests.integration.agent_pinot.conftest import (
    OPTIONS,
    Bucket,
    DeletingController,
    lead,
    running,
)
from tests.integration.pinot.support import RawHttp

ZONE = "az1"
LOGS = TableRef("logs", TableType.OFFLINE)
EVENTS = TableRef("events", TableType.REALTIME)


class MovableWallClock(SystemClock):
    """The system's clocks, with a wall clock the test moves forward (entry times, grace)."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.ahead


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[DeletingController]:
    """Zone 2: an empty Pinot."""
    async with (
        PinotEmulator(tmp_path / "zone2", options=OPTIONS) as emulator,
        DeletingController(emulator.url) as client,
    ):
        yield client


async def produce(source: PinotEmulator, count: int) -> list[str]:
    made = [await source.cluster.produce_segment("logs_OFFLINE") for _ in range(count)]
    return [name for name in made if name]


async def exists(store: ObjectStore, key: str) -> bool:
    try:
        await store.head(key)
    except NotFound:
        return False
    return True


async def deletion_entries(store: ObjectStore) -> list[LogEntry]:
    return [
        entry
        async for entry in read_entries(store, ZONE, 0)
        if isinstance(entry.payload, SegmentDeletedPayload)
    ]


def live(session: LeaderSession, name: str, table: str = "logs_OFFLINE") -> bool:
    return session.catalog.segment(table, name) is not None


async def test_deletion_recorded_on_the_second_poll_and_rehydration_follows_latest_time(
    any_bucket: Bucket,
    source: PinotEmulator,
    pinot: DeletingController,
    target: DeletingController,
) -> None:
    store = any_bucket.store
    session = await lead(store, ZONE)
    loop = SegmentBackupLoop(pinot, PinotSettings(), session.metrics, SystemClock())
    doomed, kept = await produce(source, 2)
    await loop.flush(session)
    await pinot.delete_segment(LOGS, doomed)
    await loop.flush(session)  # one poll without it: only suspected
    assert live(session, doomed)
    assert await deletion_entries(store) == []
    await loop.flush(session)  # the second consecutive one: confirmed
    assert not live(session, doomed)
    assert live(session, kept)
    [deleted] = await deletion_entries(store)
    assert isinstance(deleted.payload, SegmentDeletedPayload)
    assert (deleted.payload.table, deleted.payload.segment) == ("logs_OFFLINE", doomed)
    await loop.flush(session)  # absent still: no second entry
    assert len(await deletion_entries(store)) == 1

    catalog = await load_catalog(store, ZONE)
    before, after = deleted.time - timedelta(milliseconds=1), deleted.time
    await restore_table_configs(target, store, catalog, after)
    plan = await plan_rehydration(target, catalog, after)
    await Rehydrator(target, store, concurrency=2, batch_size=10).run(plan)
    restored = {s.name for s in await target.segments(LOGS)}
    assert kept in restored
    assert doomed not in restored
    # As of just before the deletion entry, the deleted segment is part of the backup.
    earlier = await plan_rehydration(target, catalog, before)
    assert [r.name for r in earlier.records()] == [doomed]


async def test_a_deleted_table_loses_its_segments_after_two_table_lists(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, http: RawHttp
) -> None:
    store = file_bucket.store
    session = await lead(store, ZONE)
    loop = SegmentBackupLoop(pinot, PinotSettings(), session.metrics, SystemClock())
    await produce(source, 2)
    assert await source.cluster.commit_consuming("events_REALTIME", 0)
    await loop.flush(session)
    names = [r.name for r in session.catalog.segments(table="logs_OFFLINE")]
    assert len(names) >= 2
    status, _, body = await http.call("DELETE", "/tables/logs?type=offline")
    assert status == 200, body
    await loop.flush(session)
    assert all(live(session, name) for name in names)
    await loop.flush(session)
    assert not any(live(session, name) for name in names)
    assert session.catalog.segments(table="events_REALTIME")  # the other table is untouched
    assert sorted(e.payload.segment for e in await deletion_entries(store)) == sorted(names)  # type: ignore[union-attr]


async def test_retention_purges_after_the_grace_prunes_checkpoints_and_sweeps_orphans(
    any_bucket: Bucket, source: PinotEmulator, pinot: DeletingController
) -> None:
    store = any_bucket.store
    clock = MovableWallClock()
    session = await lead(store, ZONE, clock=clock)
    loop = SegmentBackupLoop(pinot, PinotSettings(), session.metrics, clock)
    settings = BucketRetentionSettings(
        deleted_segment_grace_hours=24, orphan_grace_hours=6, keep_checkpoints=2
    )
    retention = RetentionLoop(settings, clock)
    doomed, _ = await produce(source, 2)
    await loop.flush(session)
    record = session.catalog.segment("logs_OFFLINE", doomed)
    assert record is not None
    orphan = segment_key(ZONE, "logs_OFFLINE", "ghost", "42")
    await store.put(orphan, b"uploaded by a writer that crashed before its entry")
    await pinot.delete_segment(LOGS, doomed)
    await loop.flush(session)
    await loop.flush(session)
    assert not live(session, doomed)

    first = await retention.run_once(session)
    assert (first.purged_segments, first.orphans) == (0, 0)  # all within their grace
    clock.ahead = timedelta(hours=23)
    second = await retention.run_once(session)
    assert (second.purged_segments, second.orphans) == (0, 1)
    assert not await exists(store, orphan)
    assert await exists(store, record.object_key)  # deleted 23 h ago: kept for 24
    clock.ahead = timedelta(hours=24, minutes=1)
    third = await retention.run_once(session)
    assert (third.purged_segments, third.segment_objects) == (1, 1)
    assert not await exists(store, record.object_key)
    assert session.catalog.versions("logs_OFFLINE", doomed) == []
    for kept in session.catalog.segments():
        assert await exists(store, kept.object_key)
    for config in session.catalog.table_configs().values():
        assert await exists(store, config.key)

    await produce(source, 1)
    await loop.flush(session)
    fourth = await retention.run_once(session)
    assert fourth.checkpoints == 1
    seqs = await checkpoint_seqs(store, ZONE)
    assert len(seqs) == 2
    assert not await entry_exists(store, ZONE, seqs[-1] - 1)  # older entries removed
    assert await entry_exists(store, ZONE, seqs[-1])
    loaded = await load_catalog(store, ZONE)
    assert list(loaded.rows()) == list(session.catalog.rows())


async def test_the_retention_loop_runs_on_its_schedule(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController
) -> None:
    session = await lead(file_bucket.store, ZONE)
    retention = RetentionLoop(BucketRetentionSettings(interval_minutes=0.001), SystemClock())
    async with running(retention.run(session)):
        deadline = time.monotonic() + 10
        while retention.last is None:
            assert time.monotonic() < deadline, "no retention pass within 10 s"
            await asyncio.sleep(0.01)
    assert retention.last.checkpoints == 0
    assert await checkpoint_seqs(file_bucket.store, ZONE)  # the pass wrote one


async def test_a_purge_never_deletes_an_object_a_live_entry_references(file_bucket: Bucket) -> None:
    """A segment backed up again (same name and CRC, so the same key) between the moment
    retention picked it and its purge entry: the purge leaves it, and its object, alone."""
    store = file_bucket.store
    session = await lead(store, ZONE)
    key = segment_key(ZONE, "logs_OFFLINE", "again", "7")
    info = await store.put(key, b"segment bytes")
    payload = SegmentPayload(
        table="logs_OFFLINE",
        table_type="OFFLINE",
        segment="again",
        crc="7",
        size=info.size,
        sha256=info.sha256 or "",
        key=key,
        commit_time_ms=None,
        backed_up_at=datetime.now(UTC),
    )
    await session.commit(payload)
    await session.commit(SegmentDeletedPayload(table="logs_OFFLINE", segment="again", crc="7"))
    picked = session.catalog.deletions()
    await session.commit(payload)  # Pinot has it again: live again
    retention = RetentionLoop(BucketRetentionSettings(), SystemClock())
    assert await retention._purge_batch(session, picked) == 0
    assert await exists(store, key)
    assert live(session, "again")
