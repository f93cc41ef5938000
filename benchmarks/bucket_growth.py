"""The bucket's size in a steady state of Pinot retention: bounded, or growing for ever?

    python -m benchmarks.bucket_growth [--cycles 1000] [--segments 4] [--pinot-hours 48]

One cycle is one simulated hour on a fake clock, against a ``file`` store in a temporary
folder. Each cycle "Pinot" completes ``--segments`` new segments (each is uploaded and committed
as the segment backup does) and its retention manager drops those older than ``--pinot-hours``;
the segment loop's deletion watch polls once (deletions are confirmed on the second poll and get
their ``segment-deleted`` entries); every ``--orphan-every`` cycles a writer "crashes" between
its upload and its entry (an orphan); then the agent's retention runs one pass (grace 24 h for
deleted segments, 6 h for orphans, 3 checkpoints). Every ``--sample`` cycles the bucket is
listed and its object count and bytes printed beside what it should hold: the live segments,
the segments and orphans still within their grace windows, the checkpoints kept and the log
entries after the oldest one. Exits 1 when, after the warm-up, either figure exceeds that by
more than 10 %, or when a live segment's object is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from az_agent.agent.backup.deletions import DeletionWatch
from az_agent.agent.backup.retention import RetentionLoop
from az_agent.agent.config import BucketRetentionSettings
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.errors import NotFound
from az_agent.drivers.storage.base import Body, ObjectInfo
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import Catalog, LogWriter, SegmentPayload, refresh_catalog
from az_agent.state.keys import segment_key

ZONE = "az1"
TABLE = "events_OFFLINE"
SETTINGS = BucketRetentionSettings(
    deleted_segment_grace_hours=24, orphan_grace_hours=6, keep_checkpoints=3
)
TOLERANCE = 1.10


class FakeClock:
    """Simulated time: ``advance`` moves it; ``sleep`` is not used by the passes run here."""

    def __init__(self) -> None:
        self.start = datetime.now(UTC)
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return self.elapsed

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)

    async def sleep(self, seconds: float) -> None:
        self.elapsed += seconds
        await asyncio.sleep(0)


class ClockedFileStore(FileObjectStore):
    """The file store, dating each object by the fake clock (the orphan grace reads it)."""

    def __init__(self, root: Path, clock: FakeClock) -> None:
        super().__init__(root)
        self._clock = clock
        self._born: dict[str, datetime] = {}

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        info = await super().put(key, body, if_none_match=if_none_match, if_match=if_match)
        self._born[key] = self._clock.now()
        return info

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        async for info in super().list(prefix, page_size=page_size):
            yield dataclasses.replace(info, modified=self._born.get(info.key, info.modified))


@dataclasses.dataclass
class World:
    """Ground truth: what Pinot holds and what the bucket should hold."""

    pinot: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> created hour
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> dropped hour
    orphans: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> hour
    entries: list[int] = dataclasses.field(default_factory=list)  # log entries per hour


async def back_up(session: LeaderSession, name: str, body: bytes, clock: FakeClock) -> None:
    key = segment_key(ZONE, TABLE, name, "1")
    info = await session.store.put(key, body)
    payload = SegmentPayload(
        table=TABLE,
        table_type="OFFLINE",
        segment=name,
        crc="1",
        size=info.size,
        sha256=hashlib.sha256(body).hexdigest(),
        key=key,
        commit_time_ms=None,
        backed_up_at=clock.now(),
    )
    await session.commit(payload)


def expected(
    world: World, hour: int, size: int, orphan_size: int, entry_bytes: float, checkpoint: int
) -> tuple[int, int]:
    """Objects and bytes the bucket should hold: live set plus the grace windows."""
    # A dropped segment's deletion is committed one poll later and purged by the first pass
    # at least the grace after that: within grace + 2 hours of its drop it may still be there.
    in_grace = sum(
        1 for h in world.dropped.values() if hour - h <= SETTINGS.deleted_segment_grace_hours + 2
    )
    young = sum(1 for h in world.orphans.values() if hour - h <= SETTINGS.orphan_grace_hours + 1)
    keep = SETTINGS.keep_checkpoints
    entries = sum(world.entries[-(keep + 1) :])
    objects = len(world.pinot) + in_grace + young + keep + entries
    data = (len(world.pinot) + in_grace) * size + young * orphan_size
    return objects, int(data + keep * checkpoint + entries * entry_bytes)


async def measure(store: FileObjectStore) -> tuple[int, int, int, int, int]:
    """Objects, bytes; of which log entries (count, bytes) and checkpoint bytes."""
    objects = size = log_objects = log_bytes = checkpoints = 0
    async for info in store.list(f"{ZONE}/"):
        objects += 1
        size += info.size
        if info.key.startswith(f"{ZONE}/log/"):
            log_objects += 1
            log_bytes += info.size
        elif info.key.startswith(f"{ZONE}/checkpoints/"):
            checkpoints = max(checkpoints, info.size)
    return objects, size, log_objects, log_bytes, checkpoints


async def run(args: argparse.Namespace, root: Path) -> int:
    clock = FakeClock()
    store = ClockedFileStore(root, clock)
    writer = LogWriter(store, ZONE, 1, "bench", clock=clock)
    await writer.write_fence(reason="benchmark")
    catalog = Catalog(ZONE)
    session = LeaderSession(ZONE, 1, store, writer, catalog, AgentMetrics(ZONE), clock)
    await refresh_catalog(store, catalog)  # the fence entry
    watch, retention, world = DeletionWatch(), RetentionLoop(SETTINGS, clock), World()
    body = os.urandom(args.size_kib << 10)
    orphan_body = os.urandom(args.size_kib << 9)
    failures: list[str] = []
    print("  hour  objects expected      MiB expected   log  live")
    started = time.monotonic()
    for hour in range(1, args.cycles + 1):
        before = catalog.last_seq
        for i in range(args.segments):
            name = f"events__{hour}__{i}"
            await back_up(session, name, body, clock)
            world.pinot[name] = hour
        for name, born in list(world.pinot.items()):
            if hour - born >= args.pinot_hours:  # Pinot's retention manager
                del world.pinot[name]
                world.dropped[name] = hour
        watch.saw_tables([TABLE], catalog)
        watch.saw_table(TABLE, list(world.pinot), catalog)
        await watch.commit(session)
        if hour % args.orphan_every == 0:
            key = segment_key(ZONE, TABLE, f"crashed__{hour}", "9")
            await store.put(key, orphan_body)
            world.orphans[key] = hour
        await clock.sleep(3600)
        await retention.run_once(session)
        world.entries.append(catalog.last_seq - before)
        if hour % args.sample and hour != args.cycles:
            continue
        objects, size, log_objects, log_bytes, checkpoint = await measure(store)
        entry_bytes = log_bytes / max(log_objects, 1)
        want_objects, want_bytes = expected(
            world, hour, len(body), len(orphan_body), entry_bytes, checkpoint
        )
        mib, want_mib = size / 2**20, want_bytes / 2**20
        print(
            f"{hour:>6} {objects:>8} {want_objects:>8} {mib:>8.2f} {want_mib:>8.2f} "
            f"{log_objects:>5} {len(world.pinot):>5}"
        )
        for record in catalog.segments():
            if record.name not in world.pinot:
                continue
            if not await exists(store, record.object_key):
                failures.append(f"hour {hour}: live segment {record.name} has no object")
        if hour > args.pinot_hours + SETTINGS.deleted_segment_grace_hours + 4:
            if objects > TOLERANCE * want_objects:
                failures.append(f"hour {hour}: {objects} objects, bound {want_objects}")
            if size > TOLERANCE * want_bytes:
                failures.append(f"hour {hour}: {size} bytes, bound {want_bytes}")
    missing = [n for n in world.pinot if catalog.segment(TABLE, n) is None]
    if missing:
        failures.append(f"{len(missing)} segments Pinot holds are not live in the catalog")
    print(f"{args.cycles} cycles in {time.monotonic() - started:.1f} s")
    for failure in failures[:20]:
        print("FAIL:", failure)
    print("bounded: yes" if not failures else f"bounded: NO ({len(failures)} violations)")
    return 1 if failures else 0


async def exists(store: FileObjectStore, key: str) -> bool:
    try:
        await store.head(key)
    except NotFound:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--segments", type=int, default=4, help="new segments per hour")
    parser.add_argument("--pinot-hours", type=int, default=48, help="Pinot's retention")
    parser.add_argument("--size-kib", type=int, default=64, help="segment size")
    parser.add_argument("--orphan-every", type=int, default=5, help="hours between orphans")
    parser.add_argument("--sample", type=int, default=50, help="hours between samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bucket-growth-") as folder:
        sys.exit(asyncio.run(run(args, Path(folder))))


if __name__ == "__main__":
    main()
