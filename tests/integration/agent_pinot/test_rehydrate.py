"""Back up zone 1's Pinot, rehydrate zone 2's from the bucket, and resume ingestion there."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.restore.rehydrate import (
    RehydrationFailed,
    Rehydrator,
    plan_rehydration,
    restore_table_configs,
    resume_after_restore,
)
from az_agent.drivers.errors import CorruptObject, NotFound
from az_agent.drivers.pinot import PinotSettings, SegmentStatus, TableRef, TableType
from az_agent.emulators.pinot import PinotEmulator
from az_agent.emulators.pinot import cluster as emulated_cluster
from az_agent.emulators.pinot.state import now_ms
from az_agent.state import Catalog, SegmentRecord, SystemClock, load_catalog
from tests.integration.agent_pinot.conftest import OPTIONS, Bucket, DeletingController, lead
from tests.integration.pinot.support import RawHttp, eventually

ZONE = "az1"
EVENTS = TableRef("events", TableType.REALTIME)
LOGS = TableRef("logs", TableType.OFFLINE)


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[DeletingController]:
    """Zone 2: an empty Pinot, as after the loss of its own data."""
    async with (
        PinotEmulator(tmp_path / "zone2", options=OPTIONS) as emulator,
        DeletingController(emulator.url) as client,
    ):
        yield client


async def back_up(bucket: Bucket, pinot: DeletingController) -> Catalog:
    """Zone 1's agent backs everything up; zone 2 reads the catalog from the bucket."""
    session = await lead(bucket.store, ZONE)
    loop = SegmentBackupLoop(pinot, PinotSettings(), session.metrics, SystemClock())
    assert await loop.flush(session) > 0
    return await load_catalog(bucket.store, ZONE)


async def commit(source: PinotEmulator, partitions: list[int]) -> None:
    for partition in partitions:
        assert await source.cluster.commit_consuming("events_REALTIME", partition)


def ref(record: SegmentRecord) -> TableRef:
    return TableRef.parse(record.table)


@pytest.mark.parametrize("later_minutes", [0, 5], ids=["created-now", "created-5-min-later"])
async def test_backup_then_rehydrate_into_another_zone_and_resume(
    s3_bucket: Bucket,
    source: PinotEmulator,
    pinot: DeletingController,
    http: RawHttp,
    target: DeletingController,
    monkeypatch: pytest.MonkeyPatch,
    later_minutes: int,
) -> None:
    await http.admin("POST", "/tables/events/produce?partition=1&count=5000")
    await commit(source, [0, 0, 0, 1])  # partition 0: seq 0..2; partition 1: seq 0 up to 5000
    await source.cluster.produce_segment("logs_OFFLINE")
    await source.cluster.produce_segment("logs_OFFLINE")
    catalog = await back_up(s3_bucket, pinot)
    backup = catalog.segments()
    assert len(backup) == 6

    # Table creation makes seq-0 consuming segments that the pause commits: offsets 0..1000.
    with monkeypatch.context() as patch:
        patch.setattr(emulated_cluster, "now_ms", lambda: now_ms() + later_minutes * 60_000)
        created = await restore_table_configs(target, s3_bucket.store, catalog)
    assert sorted(created) == [EVENTS, LOGS]
    assert (await target.pause_status("events_REALTIME")).is_flushed
    names = {r.name for r in backup}
    assert {s.name for s in await target.segments(EVENTS)} <= names  # strays deleted

    progress: list[tuple[int, int]] = []

    async def on_progress(segments: int, size: int) -> None:
        progress.append((segments, size))

    plan = await plan_rehydration(target, backup)
    assert (plan.segments_total, plan.bytes_total) == (6, sum(r.size for r in backup))
    assert {name: p.segments for name, p in plan.tables.items()} == {
        "events_REALTIME": 4,
        "logs_OFFLINE": 2,
    }
    await Rehydrator(
        target, s3_bucket.store, concurrency=3, batch_size=2, on_progress=on_progress
    ).run(plan)
    assert (len(progress), sum(b for _, b in progress)) == (6, plan.bytes_total)

    for record in backup:
        restored = await target.segment(ref(record), record.name)
        assert str(restored.crc) == record.crc
        assert restored.status is SegmentStatus.UPLOADED
        assert (restored.start_offset, restored.end_offset) == (
            record.start_offset,
            record.end_offset,
        )
        stored, _ = await s3_bucket.store.get(record.object_key)
        async with target.download_segment(ref(record), record.name) as download:
            assert b"".join([chunk async for chunk in download]) == stored
    again = await plan_rehydration(target, backup)
    assert (again.segments_total, again.present) == (0, 6)

    resumed = await resume_after_restore(target, sorted({r.table for r in backup}))
    assert resumed == [EVENTS]
    status = await eventually(
        lambda: target.pause_status("events_REALTIME"), lambda s: len(s.consuming_segments) == 2
    )
    for name in status.consuming_segments:
        consuming = await target.segment(EVENTS, name)
        assert consuming.llc_name is not None
        partition = consuming.llc_name.partition
        newest = max(
            (r for r in backup if r.partition == partition), key=lambda r: r.name.split("__")[2]
        )
        assert consuming.llc_name.sequence == int(newest.name.split("__")[2]) + 1
        assert consuming.start_offset == newest.end_offset
    assert [r.end_offset for r in backup if r.partition == 1] == ["5000"]
    everything = {s.name for s in await target.segments(EVENTS)}
    assert everything == {r.name for r in backup if r.table == "events_REALTIME"} | set(
        status.consuming_segments
    )


async def test_corrupt_object_is_refused_and_not_uploaded(
    s3_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, target: DeletingController
) -> None:
    for _ in range(3):
        await source.cluster.produce_segment("logs_OFFLINE")
    catalog = await back_up(s3_bucket, pinot)
    victim = catalog.segments(table="logs_OFFLINE")[1]
    await s3_bucket.backend.corrupt(s3_bucket.settings, s3_bucket.secrets, victim.object_key)
    await restore_table_configs(target, s3_bucket.store, catalog)
    plan = await plan_rehydration(target, catalog.segments())
    rehydrator = Rehydrator(target, s3_bucket.store, concurrency=1, retry_min_seconds=0.01)
    with pytest.raises(RehydrationFailed, match=f"segment {victim.name} of table logs_OFFLINE"):
        await rehydrator.run(plan)
    with pytest.raises(RehydrationFailed, match=r"after 1 attempt\(s\)") as failure:
        await rehydrator.run(await plan_rehydration(target, catalog.segments()))
    assert isinstance(failure.value.cause, CorruptObject)
    with pytest.raises(NotFound):  # the upload was aborted before the controller stored it
        await target.segment(LOGS, victim.name)
    assert target.uploads[victim.name] == 2


async def test_transient_failures_are_retried_then_reported(
    file_bucket: Bucket,
    source: PinotEmulator,
    pinot: DeletingController,
    target: DeletingController,
) -> None:
    await source.cluster.produce_segment("logs_OFFLINE")
    await source.cluster.produce_segment("logs_OFFLINE")
    catalog = await back_up(file_bucket, pinot)
    await restore_table_configs(target, file_bucket.store, catalog)
    [first, second] = catalog.segments(table="logs_OFFLINE")
    file_bucket.store.failing_reads.update({first.object_key: 2, second.object_key: 100})
    rehydrator = Rehydrator(target, file_bucket.store, attempts=3, retry_min_seconds=0.01)
    await rehydrator.run(await plan_rehydration(target, [first]))
    assert target.uploads[first.name] == 1
    assert file_bucket.store.failing_reads[first.object_key] == 0
    with pytest.raises(RehydrationFailed, match=rf"{second.name} .*after 3 attempt\(s\)"):
        await rehydrator.run(await plan_rehydration(target, [second]))
    assert target.uploads[second.name] == 0


async def test_crash_mid_rehydration_then_replan_completes_without_gap_or_duplicate(
    s3_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, target: DeletingController
) -> None:
    await commit(source, [0, 1, 0, 1, 0, 1])
    for _ in range(4):
        await source.cluster.produce_segment("logs_OFFLINE")
    catalog = await back_up(s3_bucket, pinot)
    backup = catalog.segments()
    assert len(backup) == 10
    await restore_table_configs(target, s3_bucket.store, catalog)

    done: list[int] = []
    crashed = asyncio.Event()

    async def crash_after_four(segments: int, size: int) -> None:
        done.append(size)
        if len(done) == 4:
            crashed.set()

    first_run = Rehydrator(
        target, s3_bucket.store, concurrency=2, batch_size=3, on_progress=crash_after_four
    )
    task = asyncio.ensure_future(first_run.run(await plan_rehydration(target, backup)))
    await crashed.wait()
    task.cancel()  # the agent dies here
    with pytest.raises(asyncio.CancelledError):
        await task

    plan = await plan_rehydration(target, backup)
    assert 0 < plan.segments_total <= 10 - len(done)
    await Rehydrator(target, s3_bucket.store, concurrency=2, batch_size=3).run(plan)
    for record in backup:
        assert str((await target.segment(ref(record), record.name)).crc) == record.crc
    assert set(target.uploads) == {r.name for r in backup}
    twice = [name for name, count in target.uploads.items() if count > 1]
    assert max(target.uploads.values()) <= 2
    assert len(twice) <= 2  # at most one segment per worker was in flight at the crash
    assert Counter(target.uploads.values())[1] >= 8
