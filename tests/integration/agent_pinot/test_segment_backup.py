"""The segment backup loop end to end: the Pinot emulator, a real storage server, real state."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.leadership.session import LeaderSession
from az_agent.drivers.errors import Unavailable
from az_agent.drivers.pinot import PinotSettings, SegmentMetadata, TableRef, TableType
from az_agent.drivers.pinot.tarstream import TarballInspector
from az_agent.emulators.pinot import PinotEmulator
from az_agent.emulators.pinot.factory import SegmentPlan, build_segment
from az_agent.state import SystemClock, load_catalog, read_entries
from tests.integration.agent_pinot.conftest import (
    Bucket,
    DeletingController,
    lead,
    running,
)
from tests.integration.pinot.support import RawHttp, eventually

ZONE = "az1"
EVENTS = TableRef("events", TableType.REALTIME)
LOGS = TableRef("logs", TableType.OFFLINE)
Key = tuple[str, str]


class MovableWallClock(SystemClock):
    """The system's clocks, with a wall clock the test moves forward (Pinot's segment times and
    the recovery point are wall time; the loop keeps polling on the real monotonic clock)."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.ahead


def backup_loop(
    pinot: DeletingController,
    session: LeaderSession,
    *,
    concurrency: int = 3,
    retry: float = 0.05,
    clock: SystemClock | None = None,
    refresh_scan: float = 300.0,
) -> SegmentBackupLoop:
    settings = PinotSettings(
        poll_interval_seconds=0.05,
        concurrency=concurrency,
        refresh_scan_interval_seconds=refresh_scan,
    )
    return SegmentBackupLoop(
        pinot,
        settings,
        session.metrics,
        clock or SystemClock(),
        retry_min_seconds=retry,
        retry_max_seconds=4 * retry,
        config_interval_seconds=0.05,
    )


async def ready_segments(pinot: DeletingController) -> dict[Key, SegmentMetadata]:
    found: dict[Key, SegmentMetadata] = {}
    for table in (EVENTS, LOGS):
        for meta in await pinot.backup_ready_segments(table):
            found[(table.name_with_type, meta.name)] = meta
    return found


async def backed_up(session: LeaderSession, pinot: DeletingController) -> bool:
    """Every backup-ready segment of Pinot is in the catalog with its current CRC."""
    for key, meta in (await ready_segments(pinot)).items():
        record = session.catalog.segment(*key)
        if record is None or record.crc != str(meta.crc):
            return False
    return True


async def wait_backed_up(session: LeaderSession, pinot: DeletingController) -> None:
    await eventually(lambda: backed_up(session, pinot), lambda done: done, within=20)


async def produce(emulator: PinotEmulator, table: str, count: int = 1) -> list[str]:
    made = [await emulator.cluster.produce_segment(table) for _ in range(count)]
    assert all(made)
    return [name for name in made if name]


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``condition()`` holds, as a client polling the status would."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


async def polled(pinot: DeletingController, rounds: int = 1) -> None:
    """Wait until the running loop has started ``rounds`` more poll rounds."""
    target = pinot.calls["list_tables"] + rounds
    await until(lambda: pinot.calls["list_tables"] >= target)


def sample(session: LeaderSession, name: str, **labels: str) -> float:
    value = session.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_segments_produced_while_running_all_arrive_byte_identical(
    any_bucket: Bucket, source: PinotEmulator, pinot: DeletingController
) -> None:
    store = any_bucket.store
    session = await lead(store, ZONE)
    loop = backup_loop(pinot, session)
    async with running(loop.run(session)):
        for _ in range(4):
            await produce(source, "events_REALTIME", 2)
            await produce(source, "logs_OFFLINE")
            await polled(pinot)  # a round that sees this batch: the next one comes later
        ready = await ready_segments(pinot)
        assert len(ready) == 12
        await wait_backed_up(session, pinot)

    catalog = await load_catalog(store.inner, ZONE)  # what a restarted agent would read
    for (table, name), meta in ready.items():
        record = catalog.segment(table, name)
        assert record is not None
        assert (record.crc, record.size, record.table_type) == (
            str(meta.crc),
            meta.size_bytes,
            table.rsplit("_", 1)[1],
        )
        stored, _ = await store.get(record.object_key)
        async with pinot.download_segment(TableRef.parse(table), name) as download:
            assert stored == b"".join([chunk async for chunk in download])
        inspector = TarballInspector()
        inspector.feed(stored)
        tar = inspector.finish()
        assert tar.creation_meta is not None
        assert tar.creation_meta.crc == meta.crc
        llc = meta.llc_name
        if llc is not None:
            assert (record.partition, record.start_offset, record.end_offset) == (
                llc.partition,
                meta.start_offset,
                meta.end_offset,
            )
        assert record.commit_time_ms is not None
        assert record.commit_time_ms <= record.backed_up_ts * 1000
    assert set(store.segment_puts().values()) == {1}
    assert len(store.segment_puts()) == 12
    status = loop.status()
    assert status["segmentsBackedUp"] == 12
    assert status["bytesBackedUp"] == sum(m.size_bytes or 0 for m in ready.values())
    assert (status["pending"], status["rpoSeconds"], status["failures"]) == (0, 0, {})
    assert sample(session, "az_agent_segments_backed_up_total") == 12
    assert sorted(catalog.table_configs()) == ["events_REALTIME", "logs_OFFLINE"]
    assert sorted(catalog.schemas()) == ["events", "logs"]


async def test_kill_and_restart_copies_nothing_twice_and_misses_nothing(
    s3_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, http: RawHttp
) -> None:
    store = s3_bucket.store
    await produce(source, "events_REALTIME", 8)
    await produce(source, "logs_OFFLINE", 2)
    slow = {"path": "^/segments/(events|logs)/", "method": "GET", "status": 0, "delay": 0.1}
    await http.admin("POST", "/faults", json=slow | {"times": 1000})
    stopping, dead, never = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def hold_new_puts(key: str) -> None:
        if stopping.is_set():
            await never.wait()  # the process is dying: this put never starts

    async def die_after_third_put(key: str) -> None:
        # The third object is complete in the bucket; the agent dies before its log entry,
        # once the puts already under way have finished (a kill cannot stop a completed put).
        if "/segments/" in key and sum(store.segment_puts().values()) == 3:
            stopping.set()
            await until(lambda: store.active == 1)
            dead.set()
            await never.wait()

    store.before_put, store.after_put = hold_new_puts, die_after_third_put
    first = await lead(store, ZONE)
    async with running(backup_loop(pinot, first, concurrency=2).run(first)):
        await asyncio.wait_for(dead.wait(), 30)  # the loop's third put completed
    await produce(source, "events_REALTIME", 2)  # more segments while no agent runs

    store.before_put = store.after_put = None
    second = await lead(store, ZONE, force=True)
    assert second.epoch == first.epoch + 1
    committed = second.catalog.segment_count  # an entry may land as the agent dies
    assert 1 <= first.catalog.segment_count <= committed <= 2
    restarted = backup_loop(pinot, second, concurrency=2)
    async with running(restarted.run(second)):
        await wait_backed_up(second, pinot)
    ready = await ready_segments(pinot)
    keys = {second.catalog.segment(*key).object_key for key in ready}  # type: ignore[union-attr]
    assert len(ready) == 12
    assert store.segment_puts() == Counter(dict.fromkeys(keys, 1))
    assert restarted.status()["segmentsBackedUp"] == 12 - committed


async def test_refreshed_segment_is_backed_up_again(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, tmp_path: Path
) -> None:
    [name] = await produce(source, "logs_OFFLINE")
    session = await lead(file_bucket.store, ZONE)
    loop = backup_loop(pinot, session, refresh_scan=0.05)  # a refresh shows only to a scan
    async with running(loop.run(session)):
        await wait_backed_up(session, pinot)
        old = session.catalog.segment("logs_OFFLINE", name)
        assert old is not None
        now = int(time.time() * 1000)
        plan = SegmentPlan(name, "logs", 30_000, 1234, now, now - 60_000, now, 10)
        tarball = tmp_path / "refresh.tar.gz"
        await asyncio.to_thread(build_segment, plan, tarball)
        await pinot.upload_segment(LOGS, tarball.read_bytes(), segment_name=name)
        refreshed = await pinot.segment(LOGS, name)
        assert str(refreshed.crc) != old.crc
        await wait_backed_up(session, pinot)
    new = session.catalog.segment("logs_OFFLINE", name)
    assert new is not None
    assert new.crc == str(refreshed.crc)
    assert new.object_key != old.object_key
    assert session.catalog.segment("logs_OFFLINE", name, as_of=old.committed_at) == old
    assert file_bucket.store.segment_puts() == Counter({old.object_key: 1, new.object_key: 1})
    assert loop.status()["segmentsBackedUp"] == 2  # both versions, by the loop
    stored, _ = await file_bucket.store.get(new.object_key)
    assert stored == tarball.read_bytes()


async def test_vanished_segments_are_reported_and_dropped(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, http: RawHttp
) -> None:
    session = await lead(file_bucket.store, ZONE)
    loop = backup_loop(pinot, session)
    # The download waits in the controller while the segment is deleted: a 404, then no ZK.
    fault = {"path": "^/segments/logs/logs_", "status": 0, "delay": 0.5, "times": 1}
    await http.admin("POST", "/faults", json=fault)
    [held] = await produce(source, "logs_OFFLINE")
    async with running(loop.run(session)):
        await eventually(lambda: http.admin("GET", "/faults"), lambda f: f[0]["times"] == 0)
        await pinot.delete_segment(LOGS, held)
        await until(lambda: loop.status()["vanished"]["total"] == 1)
        # Another one fails, waits for its retry, and is deleted meanwhile: gone at next poll.
        fault = {"path": "^/segments/logs/logs_", "status": 503, "times": 1000}
        await http.admin("POST", "/faults", json=fault)
        [failing] = await produce(source, "logs_OFFLINE")
        await until(lambda: loop.stats.failures["unavailable"] >= 2)
        await pinot.delete_segment(LOGS, failing)
        await until(lambda: loop.status()["vanished"]["total"] == 2)
        failures = Counter(loop.stats.failures)
        await polled(pinot, 10)  # ten polls later: not tried again
        assert loop.stats.failures == failures
        status = loop.status()
    recent = status["vanished"]["recent"]
    assert [v["segment"] for v in recent] == [held, failing]
    assert "deleted from Pinot before it was copied" in recent[0]["why"]  # 404, then no ZK
    assert recent[1]["why"] == "no longer listed by the controller"
    assert (status["pending"], status["rpoSeconds"], status["segmentsBackedUp"]) == (0, 0, 0)
    assert (
        sample(session, "az_agent_backup_failures_total", kind="segments", reason="vanished") == 2
    )
    assert file_bucket.store.segment_puts() == Counter()
    assert session.catalog.segment_count == 0


async def test_failing_download_is_retried_without_blocking_the_others(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, http: RawHttp
) -> None:
    names = await produce(source, "logs_OFFLINE", 4)
    bad = names[0]  # the oldest: first in line
    fault = {"path": f"^/segments/logs/{bad}$", "method": "GET", "status": 503, "times": 3}
    await http.admin("POST", "/faults", json=fault)
    session = await lead(file_bucket.store, ZONE)
    loop = backup_loop(pinot, session, concurrency=1, retry=0.3)
    async with running(loop.run(session)):
        await wait_backed_up(session, pinot)
    seqs = {name: session.catalog.segment("logs_OFFLINE", name).seq for name in names}  # type: ignore[union-attr]
    assert max(seqs, key=lambda name: seqs[name]) == bad  # the others went first
    assert loop.stats.failures == Counter({"unavailable": 3})
    assert (
        sample(session, "az_agent_backup_failures_total", kind="segments", reason="unavailable")
        == 3
    )
    assert loop.status()["lastError"]["segment"] == bad
    assert loop.status()["segmentsBackedUp"] == 4
    assert set(file_bucket.store.segment_puts().values()) == {1}


async def test_storage_unavailable_is_retried(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController
) -> None:
    store = file_bucket.store
    await produce(source, "logs_OFFLINE", 2)
    refusals = Counter[str]()

    async def throttled(key: str) -> None:
        if "/segments/" in key and refusals[key] < 2:
            refusals[key] += 1
            raise Unavailable(f"{key}: SlowDown (injected)")

    store.before_put = throttled
    session = await lead(store, ZONE)
    loop = backup_loop(pinot, session)
    async with running(loop.run(session)):
        await wait_backed_up(session, pinot)
    assert loop.stats.failures == Counter({"unavailable": 4})
    assert loop.status()["segmentsBackedUp"] == 2
    assert set(refusals.values()) == {2}
    assert store.segment_puts() == Counter(dict.fromkeys(refusals, 1))


async def test_configs_and_schemas_saved_once_then_again_on_change(
    file_bucket: Bucket, source: PinotEmulator, pinot: DeletingController, http: RawHttp
) -> None:
    store = file_bucket.store
    session = await lead(store, ZONE)
    loop = backup_loop(pinot, session)
    async with running(loop.run(session)):
        catalog = session.catalog
        await until(lambda: len(catalog.table_configs()) + len(catalog.schemas()) == 4)
        before = session.catalog.schemas()["events"]
        compared = pinot.calls["table_configs"]
        await polled(pinot, 10)  # ten polls; the documents of both tables compared again
        assert pinot.calls["table_configs"] >= compared + 10
        schema = await pinot.schema("events")
        schema["dimensionFieldSpecs"].append({"name": "region", "dataType": "STRING"})
        status, _, body = await http.call("POST", "/schemas", json=schema)
        assert status == 200, body
        await until(lambda: catalog.schemas()["events"].sha256 != before.sha256)
        compared = pinot.calls["table_configs"]
        await until(lambda: pinot.calls["table_configs"] >= compared + 4)  # twice more each
    # Each version once, under its digest: <zone>/pinot/<folder>/<name>/<sha256>.json.
    documents = Counter(
        k.split(f"{ZONE}/pinot/", 1)[1].rsplit("/", 1)[0] for k in store.puts if "/pinot/" in k
    )
    assert documents == Counter(
        {
            "tables/events_REALTIME": 1,
            "tables/logs_OFFLINE": 1,
            "schemas/events": 2,
            "schemas/logs": 1,
        }
    )
    assert set(store.puts[k] for k in store.puts if "/pinot/" in k) == {1}
    kinds = Counter([e.payload.kind async for e in read_entries(store, ZONE, 0)])
    assert (kinds["table-config"], kinds["schema"]) == (2, 3)
    stored, _ = await store.get(session.catalog.schemas()["events"].key)
    assert b'"region"' in stored
    assert (loop.status()["tableConfigsSaved"], loop.status()["schemasSaved"]) == (2, 3)


async def test_flush_backs_up_everything_ready_even_beside_the_loop(
    s3_bucket: Bucket, source: PinotEmulator, pinot: DeletingController
) -> None:
    store = s3_bucket.store
    await produce(source, "events_REALTIME", 4)
    await produce(source, "logs_OFFLINE", 2)
    session = await lead(store, ZONE)
    alone = backup_loop(pinot, session)
    assert await alone.flush(session) == 6
    assert await backed_up(session, pinot)
    assert await alone.flush(session) == 0
    assert sorted(session.catalog.schemas()) == ["events", "logs"]

    await produce(source, "events_REALTIME", 4)
    loop = backup_loop(pinot, session, concurrency=2)

    all_taken = asyncio.Event()

    async def hold_until_all_four_are_taken(key: str) -> None:
        # The loop's two copies wait until the flush has taken the other two in hand, so the
        # flush finds two segments being copied and copies two itself.
        if "/segments/" in key and not all_taken.is_set():
            await until(lambda: loop.status()["copying"] == 4)
            all_taken.set()

    store.before_put = hold_until_all_four_are_taken
    async with running(loop.run(session)):
        await until(lambda: loop.status()["copying"] == 2)  # the loop has started copying
        assert await loop.flush(session) == 4
        assert await backed_up(session, pinot)
    assert set(store.segment_puts().values()) == {1}
    assert len(store.segment_puts()) == 10
