"""Realtime lifecycle: commits, pause/resume, offsets, generators, restarts and a restore."""

from __future__ import annotations

from pathlib import Path

import pytest

from az_agent.drivers.errors import NotFound, Unavailable
from az_agent.drivers.pinot import (
    ConsumeFrom,
    HttpPinotController,
    SegmentMetadata,
    SegmentStatus,
    TableRef,
    TableType,
    Watermark,
)
from az_agent.emulators.pinot import EmulatorOptions, PinotEmulator, SeedTable
from tests.integration.pinot.support import RawHttp, eventually

EVENTS = TableRef("events", TableType.REALTIME)


def _by_partition(segments: list[SegmentMetadata], partition: int) -> list[SegmentMetadata]:
    found = [s for s in segments if s.llc_name and s.llc_name.partition == partition]
    return sorted(found, key=lambda s: s.llc_name.sequence if s.llc_name else -1)


async def test_commits_chain_sequence_numbers_and_offsets(
    client: HttpPinotController, http: RawHttp
) -> None:
    await http.admin("POST", "/tables/events/commit?partition=0")
    await http.admin("POST", "/tables/events/commit?partition=0")
    await http.admin("POST", "/tables/events/produce?partition=1&count=5000")
    await http.admin("POST", "/tables/events/commit?partition=1")
    segments = await client.segments(EVENTS)
    chain = [
        (s.llc_name.sequence if s.llc_name else -1, s.status.value, s.start_offset, s.end_offset)
        for s in _by_partition(segments, 0)
    ]
    assert chain == [
        (0, "DONE", "0", "1000"),
        (1, "DONE", "1000", "2000"),
        (2, "IN_PROGRESS", "2000", None),
    ]
    # What was produced is consumed by the next commit.
    assert [(s.start_offset, s.end_offset) for s in _by_partition(segments, 1)] == [
        ("0", "5000"),
        ("5000", None),
    ]
    assert await client.consumer_watermarks("events") == [
        Watermark(0, 2, 2000),
        Watermark(1, 1, 5000),
    ]
    info = await client.consuming_segments("events_REALTIME")
    assert sorted(info.segments) == sorted(
        s.name for s in segments if s.status.value == "IN_PROGRESS"
    )
    [consumer] = info.segments[_by_partition(segments, 1)[-1].name]
    assert consumer.state == "CONSUMING"
    assert consumer.current_offsets == {"1": "5000"}


async def test_pause_force_commits_then_resume_continues(
    client: HttpPinotController, http: RawHttp
) -> None:
    never = await client.pause_status("events")
    assert (never.paused, never.comment, never.timestamp) == (False, "Table is unpaused.", "")
    consuming = sorted(never.consuming_segments)
    paused = await client.pause_consumption("events", comment="failover drill")
    assert paused.paused
    assert paused.consuming_segments == tuple(consuming)
    assert paused.comment == "failover drill"
    assert paused.reason_code == "ADMINISTRATIVE"
    flushed = await eventually(lambda: client.pause_status("events"), lambda s: s.is_flushed)
    assert flushed.comment == "failover drill"
    assert flushed.timestamp == paused.timestamp
    after_pause = await client.segments(EVENTS)
    assert {s.status for s in after_pause} == {SegmentStatus.DONE}  # no successors while paused
    assert len(after_pause) == 2

    resumed = await client.resume_consumption("events")
    assert not resumed.paused
    assert resumed.consuming_segments == ()
    status = await eventually(
        lambda: client.pause_status("events"), lambda s: len(s.consuming_segments) == 2
    )
    assert status.comment == "Table is unpaused."
    assert status.timestamp == resumed.timestamp
    for partition in (0, 1):
        committed, successor = _by_partition(await client.segments(EVENTS), partition)
        assert successor.llc_name
        assert successor.llc_name.sequence == 1
        assert successor.start_offset == committed.end_offset == "1000"


@pytest.mark.parametrize(
    ("consume_from", "expected"), [(ConsumeFrom.LARGEST, "7000"), (ConsumeFrom.SMALLEST, "0")]
)
async def test_resume_from_largest_or_smallest(
    client: HttpPinotController, http: RawHttp, consume_from: ConsumeFrom, expected: str
) -> None:
    await client.pause_consumption("events")
    await eventually(lambda: client.pause_status("events"), lambda s: s.is_flushed)
    await http.admin("POST", "/tables/events/produce?partition=0&count=6000")
    await client.resume_consumption("events", consume_from=consume_from)
    await eventually(
        lambda: client.pause_status("events"), lambda s: len(s.consuming_segments) == 2
    )
    _, successor = _by_partition(await client.segments(EVENTS), 0)
    assert successor.start_offset == expected


async def test_pause_and_resume_refusals(client: HttpPinotController, http: RawHttp) -> None:
    with pytest.raises(NotFound, match="Table logs_REALTIME not found!"):
        await client.pause_consumption("logs")
    with pytest.raises(NotFound, match="Table nope_REALTIME not found!"):
        await client.pause_status("nope")
    status, _, body = await http.call(
        "POST", "/tables/events/resumeConsumption?consumeFrom=sideways"
    )
    assert (status, body["error"]) == (
        400,
        "consumeFrom param 'sideways' is not valid. Valid values are 'lastConsumed', 'smallest' "
        "and 'largest'.",
    )
    with pytest.raises(Unavailable, match="Cannot get consuming segments info for OFFLINE table"):
        await client.consuming_segments("logs_OFFLINE")
    with pytest.raises(NotFound, match="Table logs_REALTIME does not exist"):
        await client.consumer_watermarks("logs")
    status, _, body = await http.call("POST", "/tables/events/forceCommit")
    assert status == 200
    assert body["forceCommitStatus"] == "SUCCESS"
    await eventually(
        lambda: client.segments(EVENTS),
        lambda segments: sum(s.status is SegmentStatus.DONE for s in segments) == 2,
    )


async def test_generator_produces_segments_on_a_timer(
    client: HttpPinotController, http: RawHttp
) -> None:
    await http.admin("PUT", "/tables/events/generator?rate=1200&size=20000")
    await http.admin("PUT", "/tables/logs/generator?rate=1200&size=20000")
    ready = await eventually(
        lambda: client.backup_ready_segments(EVENTS), lambda found: len(found) >= 4
    )
    await http.admin("PUT", "/tables/events/generator?rate=0")
    await http.admin("PUT", "/tables/logs/generator?rate=0")
    assert {s.llc_name.partition for s in ready if s.llc_name} == {0, 1}
    assert all(15000 < (s.size_bytes or 0) < 40000 for s in ready)
    assert len(await client.backup_ready_segments(TableRef("logs", TableType.OFFLINE))) >= 2


async def test_state_survives_a_restart(data_dir: Path, tmp_path: Path) -> None:
    seeds = [SeedTable("events", "REALTIME", 1)]
    async with (
        PinotEmulator(data_dir, seed_tables=seeds) as first,
        HttpPinotController(first.url) as client,
    ):
        await client.pause_consumption("events", comment="kept")
        [before] = await eventually(
            lambda: client.backup_ready_segments(EVENTS), lambda found: len(found) == 1
        )
        async with client.download_segment(EVENTS, before.name) as download:
            original = b"".join([c async for c in download])
    async with (
        PinotEmulator(data_dir, seed_tables=seeds) as second,
        HttpPinotController(second.url) as client,
    ):
        assert await client.backup_ready_segments(EVENTS) == [before]
        status = await client.pause_status("events")
        assert status.paused
        assert status.comment == "kept"
        async with client.download_segment(EVENTS, before.name) as download:
            assert b"".join([c async for c in download]) == original


async def test_restore_resumes_after_the_newest_restored_segment(tmp_path: Path) -> None:
    """Back up committed segments from one cluster, restore them into a fresh one, resume."""
    seeds = [SeedTable("events", "REALTIME", 2)]
    options = EmulatorOptions(seed=1, segment_size=16 << 10)
    async with (
        PinotEmulator(tmp_path / "a", options=options, seed_tables=seeds) as source,
        PinotEmulator(tmp_path / "b", options=options) as target,
        HttpPinotController(source.url) as src,
        HttpPinotController(target.url) as dst,
    ):
        for _ in range(3):
            await source.cluster.commit_consuming("events_REALTIME", partition=0)
        backed_up = await src.backup_ready_segments(EVENTS)
        assert [s.end_offset for s in backed_up] == ["1000", "2000", "3000"]

        await dst.create_schema(await src.table_schema("events"))
        await dst.create_table((await src.table_configs("events"))[TableType.REALTIME])
        await dst.pause_consumption("events")
        await eventually(lambda: dst.pause_status("events"), lambda s: s.is_flushed)
        for segment in backed_up:
            async with src.download_segment(EVENTS, segment.name) as download:
                await dst.upload_segment(EVENTS, download, segment_name=segment.name)
        restored = {s.name: s for s in await dst.segments(EVENTS)}
        for segment in backed_up:
            assert restored[segment.name].crc == segment.crc
            assert restored[segment.name].status is SegmentStatus.UPLOADED
            assert restored[segment.name].end_offset == segment.end_offset

        await dst.resume_consumption("events", consume_from=ConsumeFrom.LAST_CONSUMED)
        consuming = await eventually(
            lambda: dst.pause_status("events"), lambda s: len(s.consuming_segments) == 2
        )
        newest = max(backed_up, key=lambda s: s.llc_name.sequence if s.llc_name else -1)
        resumed = [await dst.segment(EVENTS, name) for name in consuming.consuming_segments]
        [p0] = [s for s in resumed if s.llc_name and s.llc_name.partition == 0]
        assert p0.llc_name
        assert newest.llc_name
        assert p0.llc_name.sequence == newest.llc_name.sequence + 1
        assert p0.start_offset == newest.end_offset == "3000"
