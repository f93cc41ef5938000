"""Rehydration: every committed segment the local Pinot lacks, streamed from the bucket to Pinot.

:func:`plan_rehydration` compares the backup (the catalog's segments, as of the activation's
``latestTime``) with the local controller's ZK metadata: a segment is moved unless Pinot holds
one of that name with that CRC (a different CRC is replaced: the upload refreshes it).

:class:`Rehydrator` moves a plan in batches of ``batch_size`` segments, each batch with a pool of
``concurrency`` workers. A segment goes ``store.open(key)`` -> ``upload_segment`` chunk by chunk;
the reader checks the SHA-256 as it hands out the last chunk, so a corrupt object fails the
upload before it completes and nothing is stored. Transient failures are retried with backoff;
then the run stops with :class:`RehydrationFailed` naming the segment. Nothing is checkpointed
here: ``on_progress`` reports every segment so the caller can. After a crash a new plan skips
what Pinot already has, so at most the segments in flight (one per worker) are moved twice.

Configs, schemas and consumption around it live in :mod:`az_agent.agent.restore.pinot`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from az_agent.agent.backoff import backoff_delay
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.restore.pinot import (
    record_table,
    restore_table_configs,
    resume_after_restore,
    stored_table_ref,
)
from az_agent.drivers.errors import (
    CorruptObject,
    DriverError,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from az_agent.drivers.pinot.base import PinotController, SizedStream
from az_agent.drivers.pinot.models import TableRef
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import Catalog, SegmentRecord

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], Awaitable[None]]
"""Called after each segment with the increments (segments, bytes) it added: (1, its size)."""

RETRYABLE: tuple[type[DriverError], ...] = (Unavailable, PreconditionFailed)
"""Transient (5xx, timeouts, cut connections) or another upload of that segment in progress."""


class RehydrationFailed(DriverError):
    """A segment could not be restored. A :class:`DriverError` because a driver's failure is
    always the cause (chained), so callers that handle driver failures handle this one too."""

    def __init__(self, record: SegmentRecord, attempts: int, cause: DriverError) -> None:
        super().__init__(
            f"segment {record.name} of table {record.table} (CRC {record.crc}, object "
            f"{record.object_key}) was not restored after {attempts} attempt(s): "
            f"{type(cause).__name__}: {cause}"
        )
        self.record = record
        self.cause = cause


@dataclass(frozen=True, slots=True)
class TablePlan:
    table: TableRef
    segments: int = 0
    bytes: int = 0


Resolve = Callable[[str, str], SegmentRecord | None]
"""The record of a segment to move, from its table (as the catalog names it) and its name."""


@dataclass(frozen=True)
class RehydrationPlan:
    """The segments to move, in upload order, and how many of the backup Pinot already has.

    Kept as names (table runs over one list), not records: a record takes about 500 bytes, a
    name about 100, and a cold activation of a million segments moves them all. Records are
    built again a batch at a time, from the catalog the plan was made from (:meth:`batches`).
    """

    names: list[str]
    runs: list[tuple[str, int, int]]
    """``(table, start, end)``: each table's slice of ``names``, in order."""
    resolve: Resolve
    bytes_total: int = 0
    present: int = 0
    tables: dict[str, TablePlan] = field(default_factory=dict)

    @property
    def segments_total(self) -> int:
        return len(self.names)

    def batches(self, size: int) -> Iterator[list[SegmentRecord]]:
        """The moves in upload order, ``size`` records at a time (a segment gone from the
        catalog since the plan is left out, with a warning)."""
        batch: list[SegmentRecord] = []
        for table, start, end in self.runs:
            for index in range(start, end):
                name = self.names[index]
                record = self.resolve(table, name)
                if record is None:
                    log.warning(
                        "rehydration: %s of %s left the catalog since the plan", name, table
                    )
                    continue
                batch.append(record)
                if len(batch) == size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def records(self) -> Iterator[SegmentRecord]:
        """Every move's record (all built: for small plans and tests)."""
        for batch in self.batches(1024):
            yield from batch

    def describe(self) -> dict[str, Any]:
        return {
            "segments": self.segments_total,
            "bytes": self.bytes_total,
            "alreadyPresent": self.present,
            "tables": {
                name: {"segments": p.segments, "bytes": p.bytes} for name, p in self.tables.items()
            },
        }


def _upload_order(record: SegmentRecord) -> tuple[str, int, int, str]:
    """Per table, per partition, by sequence: a realtime partition is rebuilt in log order."""
    parts = record.name.split("__")
    sequence = int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else -1
    partition = record.partition if record.partition is not None else -1
    return (record.table, partition, sequence, record.name)


async def _local_crcs(pinot: PinotController | None, table: TableRef) -> dict[str, str]:
    if pinot is None:
        return {}
    try:
        return await pinot.segment_crcs(table)
    except NotFound:
        return {}  # the table does not exist (yet): everything is missing


async def plan_rehydration(
    pinot: PinotController | None,
    backup: Catalog | Sequence[SegmentRecord],
    as_of: datetime | None = None,
) -> RehydrationPlan:
    """Every segment of the backup (a catalog as of ``as_of``, or records) that the local
    Pinot lacks (same name and CRC); with no ``pinot`` (a cold zone not scaled up yet),
    every one.

    Only a move's sort key is kept, so planning a million segments holds names, not records;
    Pinot's CRCs are held one table at a time. A table Pinot already holds is compared by the
    catalog's name -> CRC map, and records are built only for what it lacks: a warm standby's
    step, which finds nearly everything present, builds next to none.
    """
    live = _Count()
    if isinstance(backup, Catalog):
        catalog = backup
        missing = _missing_from_catalog(pinot, catalog, as_of, live)

        def resolve(table: str, name: str) -> SegmentRecord | None:
            return catalog.segment(table, name, as_of)

    else:
        if as_of is not None:
            raise ValueError("as_of applies to a catalog, not to records")
        by_name = {(r.table, r.name): r for r in backup}
        records = sorted(backup, key=lambda r: r.table)  # a table's CRCs are fetched once
        missing = _missing_records(pinot, records, live)

        def resolve(table: str, name: str) -> SegmentRecord | None:
            return by_name.get((table, name))

    keys: list[tuple[str, int, int, str]] = []
    counts: dict[tuple[str, str], list[int]] = {}  # (table, type) -> [segments, bytes]
    async for record in missing:
        keys.append(_upload_order(record))
        counted = counts.setdefault((record.table, record.table_type), [0, 0])
        counted[0] += 1
        counted[1] += record.size
    tables: dict[str, TablePlan] = {}
    for (table, table_type), (segments, size) in counts.items():
        ref = stored_table_ref(table, table_type)
        tables[ref.name_with_type] = TablePlan(ref, segments, size)
    total_bytes = sum(plan.bytes for plan in tables.values())
    keys.sort()
    starts = [i for i, key in enumerate(keys) if i == 0 or keys[i - 1][0] != key[0]]
    runs = [(keys[a][0], a, b) for a, b in itertools.pairwise([*starts, len(keys)])]
    names = [key[3] for key in keys]
    del keys
    plan = RehydrationPlan(names, runs, resolve, total_bytes, live.segments - len(names), tables)
    log.info(
        "rehydration plan: %d segments (%d bytes) to move in %d tables, %d already present",
        plan.segments_total,
        plan.bytes_total,
        len(tables),
        plan.present,
    )
    return plan


@dataclass
class _Count:
    segments: int = 0


async def _missing_records(
    pinot: PinotController | None, records: Iterable[SegmentRecord], live: _Count
) -> AsyncIterator[SegmentRecord]:
    """The records Pinot lacks, read one at a time (grouped by table: a table's CRCs are
    asked for once per group)."""
    local_table: TableRef | None = None
    local: dict[str, str] = {}
    for record in records:
        live.segments += 1
        table = record_table(record)
        if table != local_table:
            local_table, local = table, await _local_crcs(pinot, table)
        if local.get(record.name) != record.crc:
            yield record


async def _missing_from_catalog(
    pinot: PinotController | None, catalog: Catalog, as_of: datetime | None, live: _Count
) -> AsyncIterator[SegmentRecord]:
    if as_of is not None:  # versions as of a time: from the records
        async for record in _missing_records(pinot, catalog.iter_segments(as_of), live):
            yield record
        return
    for table in catalog.tables():
        sample = next(catalog.iter_segments(table=table), None)  # its type, for Pinot
        if sample is None:
            continue  # nothing live
        local = await _local_crcs(pinot, record_table(sample))
        if not local:  # nothing here: every record, read in order, with no CRC map or lookup
            for record in catalog.iter_segments(table=table):
                live.segments += 1
                yield record
            continue
        crcs = catalog.segment_crcs(table)
        live.segments += len(crcs)
        for name, crc in crcs.items():
            if local.get(name) != crc:
                lacking = catalog.segment(table, name)
                assert lacking is not None, (table, name)
                yield lacking


async def _checked(chunks: AsyncIterable[bytes], record: SegmentRecord) -> AsyncIterator[bytes]:
    digest = hashlib.sha256()
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != record.sha256:
        raise CorruptObject(f"{record.object_key}: SHA-256 differs from the log's {record.sha256}")


class Rehydrator:
    """Moves a :class:`RehydrationPlan` into Pinot (see the module docstring)."""

    def __init__(
        self,
        pinot: PinotController,
        store: ObjectStore,
        *,
        concurrency: int = 8,
        batch_size: int = 50,
        on_progress: ProgressCallback | None = None,
        attempts: int = 4,
        retry_min_seconds: float = 0.5,
        retry_max_seconds: float = 30.0,
        metrics: AgentMetrics | None = None,
    ) -> None:
        if concurrency < 1 or batch_size < 1 or attempts < 1:
            raise ValueError("concurrency, batch_size and attempts must be >= 1")
        self._pinot = pinot
        self._store = store
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._on_progress = on_progress
        self._attempts = attempts
        self._retry = (retry_min_seconds, retry_max_seconds)
        self._metrics = metrics
        self.segments_done = 0
        self.bytes_done = 0
        self._started = 0.0

    @property
    def bytes_per_second(self) -> float:
        elapsed = time.monotonic() - self._started
        return self.bytes_done / elapsed if self._started and elapsed > 0 else 0.0

    async def run(self, plan: RehydrationPlan) -> None:
        """Move every segment of ``plan``; :class:`RehydrationFailed` names the one that failed
        (the others of its batch are cancelled: a new plan and run continue from there)."""
        self._started = time.monotonic()
        for number, batch in enumerate(plan.batches(self._batch_size), start=1):
            log.info("rehydration batch %d: %d segments", number, len(batch))
            await self._run_batch(batch)
        log.info(
            "rehydration done: %d segments, %d bytes, %.1f MB/s",
            self.segments_done,
            self.bytes_done,
            self.bytes_per_second / 1e6,
        )

    async def _run_batch(self, batch: Sequence[SegmentRecord]) -> None:
        queue = iter(batch)
        try:
            async with asyncio.TaskGroup() as group:
                for index in range(min(self._concurrency, len(batch))):
                    group.create_task(self._worker(queue), name=f"rehydrate-{index}")
        except BaseExceptionGroup as failed:
            # The first failure (a segment, or the progress callback): its siblings were
            # cancelled because of it, so it alone says what went wrong.
            raise failed.exceptions[0] from None

    async def _worker(self, queue: Iterator[SegmentRecord]) -> None:
        for record in queue:
            await self._move_with_retries(record)
            self.segments_done += 1
            self.bytes_done += record.size
            if self._metrics is not None:
                self._metrics.rehydration_rate.set(self.bytes_per_second)
            if self._on_progress is not None:
                await self._on_progress(1, record.size)

    async def _move_with_retries(self, record: SegmentRecord) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                await self._move(record)
                return
            except DriverError as exc:
                if self._metrics is not None:
                    reason = type(exc).__name__
                    self._metrics.restore_failures.labels(kind="segments", reason=reason).inc()
                if not isinstance(exc, RETRYABLE) or attempt == self._attempts:
                    raise RehydrationFailed(record, attempt, exc) from exc
                delay = backoff_delay(attempt, *self._retry)
                log.warning(
                    "restoring %s/%s failed (attempt %d), retrying in %.1f s: %s",
                    record.table,
                    record.name,
                    attempt,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)

    async def _move(self, record: SegmentRecord) -> None:
        table = record_table(record)
        async with self._store.open(record.object_key) as reader:
            info = reader.info
            if info.size != record.size or info.sha256 not in (None, record.sha256):
                raise CorruptObject(
                    f"{record.object_key}: holds {info.size} bytes with SHA-256 {info.sha256}, "
                    f"the log recorded {record.size} bytes with {record.sha256}"
                )
            # The reader checks the SHA-256 the store recorded; a store that records none gets
            # the log's checked here, the same way: before the upload can complete.
            body = reader if info.sha256 is not None else _checked(reader, record)
            result = await self._pinot.upload_segment(
                table, SizedStream(body, record.size), segment_name=record.name
            )
        if result.segment != record.name:
            raise CorruptObject(
                f"{record.object_key}: Pinot read segment {result.segment!r} from the tarball "
                f"of {record.name!r}"
            )


__all__ = [
    "ProgressCallback",
    "RehydrationFailed",
    "RehydrationPlan",
    "Rehydrator",
    "TablePlan",
    "plan_rehydration",
    "restore_table_configs",
    "resume_after_restore",
]
