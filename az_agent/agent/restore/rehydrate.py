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
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from az_agent.agent.backoff import backoff_delay
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.restore.pinot import record_table, restore_table_configs, resume_after_restore
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
from az_agent.state import SegmentRecord

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


@dataclass(frozen=True)
class RehydrationPlan:
    """The segments to move, in upload order, and how many of the backup Pinot already has."""

    moves: tuple[SegmentRecord, ...]
    present: int = 0
    tables: dict[str, TablePlan] = field(default_factory=dict)

    @property
    def segments_total(self) -> int:
        return len(self.moves)

    @property
    def bytes_total(self) -> int:
        return sum(record.size for record in self.moves)

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


async def _local_crcs(pinot: PinotController, table: TableRef) -> dict[str, str]:
    try:
        segments = await pinot.segments(table)
    except NotFound:
        return {}  # the table does not exist (yet): everything is missing
    return {s.name: str(s.crc) for s in segments if s.crc is not None}


async def plan_rehydration(
    pinot: PinotController, catalog_segments: Sequence[SegmentRecord]
) -> RehydrationPlan:
    """Every segment of ``catalog_segments`` that the local Pinot lacks (same name and CRC)."""
    by_table: dict[TableRef, list[SegmentRecord]] = {}
    for record in catalog_segments:
        by_table.setdefault(record_table(record), []).append(record)
    moves: list[SegmentRecord] = []
    tables: dict[str, TablePlan] = {}
    for table, records in sorted(by_table.items()):
        local = await _local_crcs(pinot, table)
        missing = [r for r in records if local.get(r.name) != r.crc]
        moves += missing
        if missing:
            size = sum(r.size for r in missing)
            tables[table.name_with_type] = TablePlan(table, len(missing), size)
    moves.sort(key=_upload_order)
    plan = RehydrationPlan(tuple(moves), len(catalog_segments) - len(moves), tables)
    log.info(
        "rehydration plan: %d segments (%d bytes) to move in %d tables, %d already present",
        plan.segments_total,
        plan.bytes_total,
        len(tables),
        plan.present,
    )
    return plan


async def _checked(chunks: AsyncIterable[bytes], record: SegmentRecord) -> AsyncIterator[bytes]:
    digest = hashlib.sha256()
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != record.sha256:
        raise CorruptObject(f"{record.object_key}: SHA-256 differs from the log's {record.sha256}")


def _batches(moves: Sequence[SegmentRecord], size: int) -> Iterator[Sequence[SegmentRecord]]:
    for start in range(0, len(moves), size):
        yield moves[start : start + size]


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
        for number, batch in enumerate(_batches(plan.moves, self._batch_size), start=1):
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
