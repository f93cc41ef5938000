"""The emulated cluster's behaviour: realtime consumption, commits, pause/resume, generators.

One in-process "server" consumes every partition. A consuming segment is committed on demand
(the admin endpoint), by a pause's force-commit, or by a table's generator timer; the commit
writes a real segment tarball to the deep store, marks the segment ``DONE``/``ONLINE`` and,
unless the table is paused, adds the next sequence number as ``CONSUMING`` from the end offset
(``PinotLLCRealtimeSegmentManager``). Resume repairs each partition as
``ensureAllPartitionsConsuming`` does. Stream offsets are simulated per topic: each commit
consumes ``docs`` offsets (or up to what was produced), so resumed consumption can be checked.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from urllib.parse import quote

from az_agent.drivers.pinot.segments import CreationMeta, LLCSegmentName
from az_agent.emulators.pinot.common import (
    PAUSE_COMMENT,
    RESUME_COMMENT,
    PinotHttpError,
    TaskOwner,
    pause_details,
)
from az_agent.emulators.pinot.factory import (
    BuiltSegment,
    SegmentPlan,
    build_segment,
    metadata_properties,
)
from az_agent.emulators.pinot.helix import Helix
from az_agent.emulators.pinot.state import (
    CONSUMING,
    OFFLINE,
    ONLINE,
    ClusterState,
    GeneratorSpec,
    JsonObject,
    PauseRecord,
    SegmentRecord,
    Store,
    TableRecord,
    java_timestamp,
    now_ms,
)
from az_agent.emulators.pinot.zkmeta import SegmentFacts, committed_zk, consuming_zk, uploaded_zk

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmulatorOptions:
    seed: int = 0
    segment_size: int = 64 << 10
    """Default size of committed segments (tables without a generator)."""
    docs_per_segment: int = 1000
    """Stream offsets one commit consumes when nothing more was produced."""
    partitions: int = 2
    """Partitions of a topic the emulator has not heard of before."""
    gzip_level: int = 0


def stream_config(config: JsonObject) -> dict[str, str]:
    """The first stream config map (``streamIngestionConfig``, else legacy ``streamConfigs``)."""
    ingestion = (config.get("ingestionConfig") or {}).get("streamIngestionConfig") or {}
    maps = ingestion.get("streamConfigMaps") or []
    if maps:
        return {str(k): str(v) for k, v in maps[0].items()}
    legacy = (config.get("tableIndexConfig") or {}).get("streamConfigs") or {}
    return {str(k): str(v) for k, v in legacy.items()}


class Cluster:
    """State plus the operations that change it; handlers call these under no lock."""

    def __init__(
        self, store: Store, state: ClusterState, options: EmulatorOptions, tasks: TaskOwner
    ) -> None:
        self.store = store
        self.state = state
        self.options = options
        self.tasks = tasks
        self.lock = asyncio.Lock()
        self.url = ""
        self.health = "GOOD"
        self.helix = Helix.default()
        self._committing: set[tuple[str, str]] = set()
        self._generators: dict[str, asyncio.Task[None]] = {}

    async def save(self) -> None:
        await self.store.save(self.state)

    def download_url(self, raw: str, segment: str) -> str:
        return f"{self.url}/segments/{raw}/{quote(segment, safe='')}"

    def realtime_table(self, name: str) -> TableRecord:
        """``validateTable`` of the realtime resource: 404 ``Table x_REALTIME not found!``."""
        typed = name if name.endswith("_REALTIME") else f"{name}_REALTIME"
        table = self.state.tables.get(typed)
        if table is None:
            raise PinotHttpError(404, f"Table {typed} not found!")
        return table

    # --- topics ------------------------------------------------------------------------------

    def topic_of(self, table: TableRecord) -> list[int]:
        stream = stream_config(table.config)
        kind = stream.get("streamType", "kafka")
        topic = stream.get(f"stream.{kind}.topic.name", table.raw)
        return self.state.topics.setdefault(topic, [0] * self.options.partitions)

    def _flush_rows(self, table: TableRecord, partitions: int) -> int:
        stream = stream_config(table.config)
        rows = stream.get("realtime.segment.flush.threshold.rows") or stream.get(
            "realtime.segment.flush.threshold.size", "5000000"
        )
        return max(1, int(rows) // max(1, partitions)) if rows.isdigit() else 100000

    def _replicas(self, table: TableRecord) -> int:
        replication = str((table.config.get("segmentsConfig") or {}).get("replication", "1"))
        return int(replication) if replication.isdigit() else 1

    def _start_offset(self, table: TableRecord, partition: int, criteria: str | None) -> int:
        heads = self.topic_of(table)
        if criteria is None:
            stream = stream_config(table.config)
            kind = stream.get("streamType", "kafka")
            criteria = stream.get(f"stream.{kind}.consumer.prop.auto.offset.reset", "largest")
        return 0 if criteria.lower() == "smallest" else heads[partition]

    def add_consuming(self, table: TableRecord, name: LLCSegmentName, start: int, at: int) -> None:
        heads = self.topic_of(table)
        zk = consuming_zk(
            created_ms=at,
            start_offset=str(start),
            replicas=self._replicas(table),
            flush_rows=self._flush_rows(table, len(heads)),
        )
        table.segments[str(name)] = SegmentRecord(zk, CONSUMING)

    def start_consuming(self, table: TableRecord) -> None:
        """``setUpNewTable``: one sequence-0 consuming segment per partition, one timestamp."""
        at = now_ms()
        for partition in range(len(self.topic_of(table))):
            name = LLCSegmentName.build(table.raw, partition, 0, at)
            self.add_consuming(table, name, self._start_offset(table, partition, None), at)

    # --- commits -----------------------------------------------------------------------------

    def _segment_size(self, table: TableRecord) -> int:
        return table.generator.size_bytes if table.generator else self.options.segment_size

    def _plan_commit(self, table: TableRecord, name: str, record: SegmentRecord) -> SegmentPlan:
        llc = LLCSegmentName.parse(name)
        assert llc is not None
        heads = self.topic_of(table)
        start = int(record.zk.get("segment.realtime.startOffset", "0"))
        end = max(heads[llc.partition], start + self.options.docs_per_segment)
        created = int(record.zk.get("segment.creation.time", str(now_ms())))
        return SegmentPlan(
            name=name,
            raw_table=table.raw,
            size_bytes=self._segment_size(table),
            seed=self.options.seed,
            creation_time_ms=now_ms(),
            start_time_ms=created,
            end_time_ms=max(created, now_ms()),
            total_docs=end - start,
            time_column=(table.config.get("segmentsConfig") or {}).get("timeColumnName"),
            start_offset=str(start),
            end_offset=str(end),
            gzip_level=self.options.gzip_level,
        )

    async def commit(self, table_name: str, segment: str) -> bool:
        """Commit one consuming segment; ``False`` if it is not (or no longer) consuming."""
        key = (table_name, segment)
        async with self.lock:
            table = self.state.tables.get(table_name)
            record = table.segments.get(segment) if table else None
            if table is None or record is None or record.state != CONSUMING:
                return False
            if self.helix.consumer_state(table_name) != "CONSUMING":
                return False  # a dead server or a stalled stream consumes nothing
            if key in self._committing:
                return False
            self._committing.add(key)
            plan = self._plan_commit(table, segment, record)
        scratch = self.store.scratch_file("commit")
        try:
            built = await asyncio.to_thread(build_segment, plan, scratch)
            return await self._finish_commit(table_name, segment, plan, scratch, built)
        finally:
            self._committing.discard(key)
            await asyncio.to_thread(scratch.unlink, True)

    async def _finish_commit(
        self,
        table_name: str,
        segment: str,
        plan: SegmentPlan,
        scratch: os.PathLike[str],
        built: BuiltSegment,
    ) -> bool:
        async with self.lock:
            table = self.state.tables.get(table_name)
            record = table.segments.get(segment) if table else None
            if table is None or record is None or record.state != CONSUMING:
                return False  # deleted, or replaced by an upload, while it was being built
            await asyncio.to_thread(_move, scratch, self.store.blob(table.raw, segment))
            facts = facts_of(plan, built, self.download_url(table.raw, segment))
            now = now_ms()
            assert plan.end_offset is not None
            record.zk = committed_zk(record.zk, facts, plan.end_offset, now)
            record.state = ONLINE
            llc = LLCSegmentName.parse(segment)
            assert llc is not None
            heads = self.topic_of(table)
            heads[llc.partition] = max(heads[llc.partition], int(plan.end_offset))
            if not table.is_paused:
                self.add_consuming(table, llc.next(now), int(plan.end_offset), now)
        await self.save()
        return True

    async def commit_consuming(self, table_name: str, partition: int | None = None) -> list[str]:
        """Commit the consuming segments (of one partition) now; the names committed."""
        table = self.state.tables.get(table_name)
        if table is None:
            return []
        names = [
            name
            for name in table.consuming()
            if partition is None or name.split("__")[1] == str(partition)
        ]
        done = await asyncio.gather(*(self.commit(table_name, name) for name in names))
        return [name for name, ok in zip(names, done, strict=True) if ok]

    async def _commit_in_background(self, table_name: str, segment: str) -> None:
        await self.commit(table_name, segment)

    def force_commit(self, table: TableRecord) -> list[str]:
        """Start committing every consuming segment in the background; their names."""
        consuming = table.consuming()
        for name in consuming:
            self.tasks.spawn(self._commit_in_background(table.name, name), f"commit {name}")
        return consuming

    # --- pause and resume --------------------------------------------------------------------

    async def pause(self, name: str, comment: str | None) -> JsonObject:
        async with self.lock:
            table = self.realtime_table(name)
            stamp = java_timestamp(now_ms())
            table.pause = PauseRecord(True, "ADMINISTRATIVE", comment, stamp)
            consuming = self.force_commit(table)
        await self.save()
        return pause_details(True, consuming, comment or PAUSE_COMMENT, stamp)

    async def resume(self, name: str, consume_from: str | None, comment: str | None) -> JsonObject:
        async with self.lock:
            table = self.realtime_table(name)
            stamp = java_timestamp(now_ms())
            table.pause = PauseRecord(False, "ADMINISTRATIVE", comment, stamp)
            consuming = table.consuming()
        await self.save()
        self.tasks.spawn(self.ensure_consuming(table.name, consume_from), f"resume {table.name}")
        return pause_details(False, consuming, comment or RESUME_COMMENT, stamp)

    async def ensure_consuming(self, table_name: str, criteria: str | None) -> None:
        """``ensureAllPartitionsConsuming``: a consuming segment after each partition's latest."""
        async with self.lock:
            table = self.state.tables.get(table_name)
            if table is None or table.is_paused:
                return
            latest = table.latest_per_partition()
            at = now_ms()
            for partition in range(len(self.topic_of(table))):
                if partition not in latest:
                    name = LLCSegmentName.build(table.raw, partition, 0, at)
                    start = self._start_offset(table, partition, criteria or "smallest")
                    self.add_consuming(table, name, start, at)
                    continue
                llc, record = latest[partition]
                start_at = self._resume_offset(table, partition, record, criteria)
                if start_at is not None:
                    self.add_consuming(table, llc.next(at), start_at, at)
        await self.save()

    def _resume_offset(
        self, table: TableRecord, partition: int, record: SegmentRecord, criteria: str | None
    ) -> int | None:
        status = record.zk.get("segment.realtime.status", "UPLOADED")
        if record.state == CONSUMING or (record.state == ONLINE and status == "IN_PROGRESS"):
            return None
        key = (
            "segment.realtime.startOffset"
            if record.state == OFFLINE
            else "segment.realtime.endOffset"
        )
        if criteria is not None:
            return self._start_offset(table, partition, criteria)
        offset = record.zk.get(key) or record.zk.get("segment.realtime.startOffset", "0")
        return max(0, int(offset))  # the stream's smallest offset is 0: never below it

    # --- generated segments -----------------------------------------------------------------

    def set_generator(self, table: TableRecord, spec: GeneratorSpec | None) -> None:
        table.generator = spec
        running = self._generators.pop(table.name, None)
        if running is not None:
            running.cancel()
        if spec is not None and spec.rate_per_min > 0:
            task = self.tasks.spawn(self._generate(table.name), f"generator {table.name}")
            if task is not None:
                self._generators[table.name] = task

    def start_generators(self) -> None:
        for table in list(self.state.tables.values()):
            if table.generator is not None:
                self.set_generator(table, table.generator)

    async def _generate(self, table_name: str) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while (table := self.state.tables.get(table_name)) and table.generator:
            interval = 60.0 / table.generator.rate_per_min
            next_at = max(next_at + interval, loop.time() - interval)
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                await self.produce_segment(table_name)
            except Exception:
                log.exception("pinot emulator: generating a segment of %s failed", table_name)

    async def produce_segment(self, table_name: str) -> str | None:
        """One new complete segment: commit the oldest consuming one, or push an OFFLINE one."""
        table = self.state.tables.get(table_name)
        if table is None:
            return None
        if table.type == "OFFLINE":
            return await self.generate_offline(table_name)
        candidates = sorted(
            table.consuming(), key=lambda n: table.segments[n].zk.get("segment.creation.time", "")
        )
        for name in candidates:
            if await self.commit(table_name, name):
                return name
        return None

    async def generate_offline(self, table_name: str) -> str | None:
        async with self.lock:
            table = self.state.tables.get(table_name)
            if table is None:
                return None
            table.generated += 1
            end = now_ms()
            name = f"{table.raw}_{end - 3_600_000}_{end}_{table.generated}"
            plan = SegmentPlan(
                name=name,
                raw_table=table.raw,
                size_bytes=self._segment_size(table),
                seed=self.options.seed,
                creation_time_ms=end,
                start_time_ms=end - 3_600_000,
                end_time_ms=end,
                total_docs=self.options.docs_per_segment,
                time_column=(table.config.get("segmentsConfig") or {}).get("timeColumnName"),
                gzip_level=self.options.gzip_level,
            )
        scratch = self.store.scratch_file("offline")
        try:
            built = await asyncio.to_thread(build_segment, plan, scratch)
            async with self.lock:
                table = self.state.tables.get(table_name)
                if table is None:
                    return None
                await asyncio.to_thread(_move, scratch, self.store.blob(table.raw, name))
                facts = facts_of(plan, built, self.download_url(table.raw, name))
                zk = uploaded_zk(None, facts, realtime=False, segment=name, now=now_ms())
                table.segments[name] = SegmentRecord(zk, ONLINE)
        finally:
            await asyncio.to_thread(scratch.unlink, True)
        await self.save()
        return name


def _move(source: os.PathLike[str], target: os.PathLike[str]) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(source, target)


def facts_of(plan: SegmentPlan, built: BuiltSegment, url: str) -> SegmentFacts:
    """What the controller would read from a generated tarball, without reading it back."""
    meta = CreationMeta(built.crc, built.creation_time_ms, built.data_crc)
    return SegmentFacts(metadata_properties(plan), meta, url, built.size_bytes)
