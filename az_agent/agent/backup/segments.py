"""Continuous segment backup: every completed Pinot segment is streamed to the bucket as it appears.

While the agent leads its zone, :class:`SegmentBackupLoop` asks the controller every
``pollIntervalSeconds`` for the backup-ready segments (committed or pushed, with a CRC and a
deep-store copy) of the configured tables, or of every table, and copies each (table, name, CRC)
that the catalog does not hold yet (every segment's metadata at a scan, every
``refreshScanIntervalSeconds``; the names, and the metadata of new ones, between scans: see
:mod:`~az_agent.agent.backup.discovery`): controller download, CRC of ``creation.meta`` checked
against ZooKeeper's on the way, streaming ``put`` to
``<zone>/segments/<table>/<segment>/<crc>.tar.gz``, then a ``segment`` log entry. A segment
never sits in memory: a transfer holds a few upload parts.

* At most ``concurrency`` transfers run at once (the loop and :meth:`flush` share the slots); a
  failed segment is tried again after an exponential backoff and never holds up the others.
* A segment gone from Pinot before it was copied (no longer listed, or 404 and no ZK metadata)
  is reported as vanished (metric, status, log) and dropped; a refresh (same name, new CRC)
  replaces the version still waiting.
* An object already at its key (copied before a crash, before its entry was written) is adopted
  without a second copy: the put of a verified stream only completes when the CRC matched.
* A backed-up segment Pinot no longer lists gets a ``segment-deleted`` entry once two
  consecutive polls confirm it (:mod:`~az_agent.agent.backup.deletions`).
* Table configs and schemas go to ``<zone>/pinot/...`` whenever their canonical JSON changes.
* Recovery point (only while a session backs up; None otherwise, and no metric series): the
  age of the oldest backup-ready segment not yet committed, or how long Pinot has gone unseen
  if that is older, since an agent that cannot see Pinot is not "0 behind". A complete look
  (every table listed) is due every poll interval; only when the last one is older than
  :func:`blind_after` (one interval plus a margin for a slow poll) does the time since it
  count, and then all of it (whatever completed since may be missing), so a healthy loop reads
  0 while idle and a blind one climbs. Before a session's first complete look, the time since
  it began counts.

What a poll does to the set of waiting segments is in :mod:`~az_agent.agent.backup.discovery`,
how backup is measured and shown in :mod:`~az_agent.agent.backup.segment_stats`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

from az_agent.agent.backup.bookkeeping import KIND, Bookkeeping
from az_agent.agent.backup.deletions import DeletionWatch
from az_agent.agent.backup.discovery import (
    Outcome,
    Pending,
    forget,
    new_names,
    read_metadata,
    reconcile,
    track,
    wanted_tables,
    worth_a_scan,
)
from az_agent.agent.backup.segment_stats import (
    BackupStats,
    Key,
    completed_at_ms,
    now_ms,
)
from az_agent.agent.backup.tables import save_table_documents
from az_agent.agent.backup.transfer import transfer_segment
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.errors import CorruptObject, DriverError, NotFound, Unavailable
from az_agent.drivers.pinot.base import PinotController
from az_agent.drivers.pinot.config import PinotSettings
from az_agent.drivers.pinot.models import SegmentMetadata, TableRef
from az_agent.state import Clock, Fenced, NotLeader, StateError

log = logging.getLogger(__name__)

T = TypeVar("T")


class SegmentBackupLoop:
    """The agent's :class:`~az_agent.agent.leadership.loops.SegmentBackup` (module docstring).

    One :meth:`run` at a time; :meth:`flush` may run beside it. All waits go through ``clock``.
    """

    def __init__(
        self,
        pinot: PinotController,
        settings: PinotSettings,
        metrics: AgentMetrics,
        clock: Clock,
        *,
        retry_min_seconds: float = 2.0,
        retry_max_seconds: float = 300.0,
        config_interval_seconds: float = 60.0,
        flush_attempts: int = 5,
    ) -> None:
        self._pinot = pinot
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._config_interval = config_interval_seconds
        self._flush_attempts = max(1, flush_attempts)
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._pending: dict[Key, Pending] = {}
        self._claims: dict[Key, asyncio.Future[None]] = {}
        self._scheduled: set[Key] = set()
        self._wake = asyncio.Event()
        self._session: LeaderSession | None = None
        self._began = 0.0
        self._last_look: float | None = None
        """When this session's last complete look at Pinot began (None: none yet)."""
        self._configs_due = 0.0
        self._scan_due = 0.0
        """When the next poll reads every segment's metadata (see discovery's docstring)."""
        self.deletions = DeletionWatch()
        self.stats = BackupStats()
        self._book = Bookkeeping(metrics, self.stats, clock, (retry_min_seconds, retry_max_seconds))
        metrics.recovery.track(KIND, self.recovery_point)
        metrics.segments_pending.set_function(lambda: len(self._pending))

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, session: LeaderSession) -> None:
        """Back up new segments until cancelled; returns quietly when fenced or not leader."""
        if self._session is not None:
            raise RuntimeError("the segment backup loop is already running")
        self._session = session
        self._began, self._last_look = self._clock.monotonic(), None
        self.deletions = DeletionWatch()  # suspicions of an earlier session are stale
        self._configs_due = self._scan_due = 0.0
        log.info(
            "zone %s: segment backup starts for epoch %d: %s, every %.1f s, %d at a time",
            session.zone,
            session.epoch,
            ", ".join(self._settings.tables) or "every table",
            self._settings.poll_interval_seconds,
            self._settings.concurrency,
        )
        try:
            async with asyncio.TaskGroup() as workers:
                await self._serve(session, workers)
        except* (Fenced, NotLeader) as group:
            log.info("zone %s: segment backup stops: %s", session.zone, group.exceptions[0])
        finally:
            self._session = None
            self._scheduled.clear()

    async def _serve(self, session: LeaderSession, workers: asyncio.TaskGroup) -> None:
        next_poll = self._clock.monotonic()
        while session.is_usable:
            if self._clock.monotonic() >= next_poll:
                await self._poll(session, strict=False)
                next_poll = self._clock.monotonic() + self._settings.poll_interval_seconds
            self._start_due(session, workers)
            await self._wait(min(next_poll, self._next_due()) - self._clock.monotonic())
        log.info("zone %s: segment backup stops: the log writer is fenced", session.zone)

    def _start_due(self, session: LeaderSession, workers: asyncio.TaskGroup) -> None:
        """Start the oldest due segments in the free worker places."""
        now = self._clock.monotonic()
        free = self._settings.concurrency - len(self._scheduled)
        due = [
            item
            for key, item in self._pending.items()
            if key not in self._scheduled and key not in self._claims and item.next_try <= now
        ]
        for item in sorted(due, key=lambda p: p.completed_ms)[: max(free, 0)]:
            self._scheduled.add(item.key)
            workers.create_task(self._work(session, item), name=f"backup {item.meta.name}")

    def _next_due(self) -> float:
        """When a waiting segment is next due; never while every worker place is taken."""
        if len(self._scheduled) >= self._settings.concurrency:
            return math.inf
        waiting = (
            item.next_try
            for key, item in self._pending.items()
            if key not in self._scheduled and key not in self._claims
        )
        return min(waiting, default=math.inf)

    async def _work(self, session: LeaderSession, item: Pending) -> None:
        try:
            await self._attempt(session, item)
        finally:
            self._scheduled.discard(item.key)
            self._wake.set()

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` on the clock, or less when a worker finishes."""
        if not self._wake.is_set():
            sleeper = asyncio.ensure_future(self._clock.sleep(max(min(seconds, 3600.0), 0.0)))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
                await asyncio.gather(sleeper, waker, return_exceptions=True)
        self._wake.clear()

    # -- flush (pause) ----------------------------------------------------------------------

    async def flush(self, session: LeaderSession) -> int:
        """Back up everything backup-ready now (for /pause); how many segments were committed.

        Discovery errors propagate; each segment gets ``flush_attempts`` tries with backoff, and
        when one still fails the first such error is raised after the others are done.
        Vanished segments are reported and do not count as failures.
        """
        await self._poll(session, strict=True, configs=True, scan=True)
        wanted = sorted(self._pending.values(), key=lambda p: p.completed_ms)
        log.info("zone %s: flushing %d pending segments", session.zone, len(wanted))
        results = await asyncio.gather(
            *(self._flush_one(session, item) for item in wanted), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Fenced | NotLeader | asyncio.CancelledError):
                raise result
        failed = [r for r in results if isinstance(r, BaseException)]
        for error in failed:
            log.error("flush: a segment could not be backed up: %s", error)
        if failed:
            raise failed[0]
        return sum(1 for r in results if r is True)

    async def _flush_one(self, session: LeaderSession, item: Pending) -> bool:
        for attempt in range(self._flush_attempts):
            outcome = await self._attempt(session, item)
            if outcome in (Outcome.COMMITTED, Outcome.PRESENT):
                return True  # committed during this flush, by it or by the loop
            current = self._pending.get(item.key)
            if outcome is Outcome.GONE and current is None:
                return False
            if current is not None and current is not item:
                item = current  # refreshed meanwhile: the new version is the one to flush
                continue
            if attempt + 1 < self._flush_attempts:
                await self._clock.sleep(self._book.backoff(attempt + 1))
        raise item.error or Unavailable(f"{item.describe()} kept changing during the flush")

    async def discover(self, session: LeaderSession, *, scan: bool = False) -> int:
        """One discovery poll outside :meth:`run` (``benchmarks.discovery`` times it); errors
        propagate. How many segment versions wait to be copied afterwards."""
        await self._poll(session, strict=True, scan=scan)
        return len(self._pending)

    # -- one segment ------------------------------------------------------------------------

    async def _attempt(self, session: LeaderSession, item: Pending) -> Outcome:
        """Copy ``item`` unless another task is copying it, in which case wait for that one."""
        while (claim := self._claims.get(item.key)) is not None:
            await asyncio.wait((claim,))
        record = session.catalog.segment(*item.key)
        if record is not None and record.crc == item.crc:
            forget(self._pending, item)
            return Outcome.PRESENT
        if self._pending.get(item.key) is not item:
            return Outcome.GONE
        claim = self._claims[item.key] = asyncio.get_running_loop().create_future()
        try:
            return await self._copy(session, item)
        finally:
            del self._claims[item.key]
            claim.set_result(None)

    async def _copy(self, session: LeaderSession, item: Pending) -> Outcome:
        started = self._clock.monotonic()
        try:
            payload = await transfer_segment(
                session, self._pinot, self._slots, item, self._clock.now()
            )
        except (Fenced, NotLeader):
            raise
        except (NotFound, CorruptObject) as exc:
            return await self._check_gone(item, exc)
        except (DriverError, StateError) as exc:
            return self._book.failed(self._pending, item, exc)
        except Exception as exc:
            log.exception("backing up %s failed unexpectedly", item.describe())
            return self._book.failed(self._pending, item, exc)
        self._book.succeeded(self._pending, item, payload, self._clock.monotonic() - started)
        return Outcome.COMMITTED

    async def _check_gone(self, item: Pending, exc: DriverError) -> Outcome:
        """After a 404 or a CRC mismatch: vanished, refreshed meanwhile, or a plain failure."""
        try:
            current = await self._pinot.segment(item.table, item.meta.name)
        except NotFound:
            self._book.vanished(
                self._pending, item, f"deleted from Pinot before it was copied ({exc})"
            )
            return Outcome.GONE
        except DriverError:
            return self._book.failed(self._pending, item, exc)
        if current.crc == item.meta.crc:
            return self._book.failed(self._pending, item, exc)
        log.info("%s was refreshed while being copied; now CRC %s", item.describe(), current.crc)
        forget(self._pending, item)
        if current.is_backup_ready:
            track(self._pending, item.table, current, self._clock)
        return Outcome.GONE

    # -- discovery --------------------------------------------------------------------------

    async def _poll(
        self, session: LeaderSession, *, strict: bool, configs: bool = False, scan: bool = False
    ) -> None:
        """Refresh the pending set from the controller (and save configs when due); a scan
        reads every segment's metadata, other polls only that of new names. A failing table is
        counted and logged, the others are still polled; ``strict`` raises instead."""
        now = self._clock.monotonic()
        configs = configs or now >= self._configs_due
        scan = scan or now >= self._scan_due
        tables = await self._guarded(self._tables(session), "the table list", strict)
        if tables is None:
            self.deletions.list_failed()
            return
        looked = True
        for table in tables:
            polled = self._poll_table(session, table, scan)
            if not await self._guarded(polled, str(table), strict):
                looked = False
                self.deletions.table_failed(table.name_with_type)
            if configs:
                await self._guarded(self._save_configs(session, table), str(table), strict)
        names = {t.name_with_type for t in tables}
        for key, item in list(self._pending.items()):
            if key[0] not in names and key not in self._claims:
                self._book.vanished(
                    self._pending, item, "its table is no longer listed by the controller"
                )
        await self._guarded(self.deletions.commit(session), "deleted segments", strict)
        self.stats.polled(sorted(names), self._clock.now())
        if looked:
            self._last_look = now
            if scan:
                self._scan_due = now + self._settings.refresh_scan_interval_seconds
        if configs:
            self._configs_due = now + self._config_interval

    async def _guarded(self, step: Awaitable[T], what: str, strict: bool) -> T | None:
        try:
            return await step
        except (Fenced, NotLeader):
            raise
        except (DriverError, StateError) as exc:
            if strict:
                raise
            self._metrics.backup_failures.labels(kind=KIND, reason="discovery").inc()
            self.stats.failed(None, "discovery", exc, self._clock.now())
            log.warning("segment discovery failed for %s: %s", what, exc)
            return None

    async def _tables(self, session: LeaderSession) -> list[TableRef]:
        listed = await self._pinot.list_tables()
        self.deletions.saw_tables([t.name_with_type for t in listed], session.catalog)
        return wanted_tables(listed, self._settings.tables)

    async def _poll_table(self, session: LeaderSession, table: TableRef, scan: bool) -> bool:
        present: set[str] | None = None
        try:
            if scan:
                segments = await self._scan(session, table)
            else:
                present, segments = await self._list(session, table)
        except NotFound:
            segments = []  # the table was deleted: what it still had pending is gone with it
            present = None
            self.deletions.table_failed(table.name_with_type)  # the table list judges it
        ready = sorted((s for s in segments if s.is_backup_ready), key=lambda s: s.name)
        unlisted = reconcile(
            self._pending, table, ready, session.catalog, self._claims, self._clock, present
        )
        for item in unlisted:
            self._book.vanished(self._pending, item, "no longer listed by the controller")
        return True

    async def _scan(self, session: LeaderSession, table: TableRef) -> list[SegmentMetadata]:
        """Every segment's metadata, in one request (a refresh shows only here)."""
        segments = await self._pinot.segments(table)
        names = {meta.name for meta in segments}
        self.deletions.saw_table(table.name_with_type, names, session.catalog)
        return segments

    async def _list(
        self, session: LeaderSession, table: TableRef
    ) -> tuple[set[str], list[SegmentMetadata]]:
        """Every segment's name, and the metadata of the names neither backed up nor waiting."""
        present = set(await self._pinot.segment_names(table))
        held = set(session.catalog.segment_names(table.name_with_type))
        self.deletions.saw_table(table.name_with_type, present, session.catalog, held)
        fresh = new_names(table, present, held, self._pending)
        if worth_a_scan(fresh, present):
            return present, await self._pinot.segments(table)
        return present, await read_metadata(self._pinot, table, fresh)

    async def _save_configs(self, session: LeaderSession, table: TableRef) -> None:
        for kind in await save_table_documents(session, self._pinot, table):
            self.stats.documents[kind] += 1

    # -- status and metrics -------------------------------------------------------------------

    def recovery_point(self) -> float | None:
        """Seconds of segments that may not be durable (module docstring); None while no
        session backs up."""
        if self._session is None:
            return None
        now = self._clock.monotonic()
        if self._last_look is None:
            unseen = now - self._began
        else:
            unseen = now - self._last_look
            if unseen <= blind_after(self._settings.poll_interval_seconds):
                unseen = 0.0
        oldest = min((item.completed_ms for item in self._pending.values()), default=None)
        waiting = 0.0 if oldest is None else (now_ms(self._clock) - oldest) / 1000
        return max(waiting, unseen, 0.0)

    def rpo_seconds(self) -> float:
        """:meth:`recovery_point`, 0 while not backing up (for ``/status``)."""
        return self.recovery_point() or 0.0

    def status(self) -> dict[str, Any]:
        """JSON-ready: leadership, recovery point, counts, failures, vanished segments."""
        session = self._session
        return {
            "leading": session is not None,
            "epoch": session.epoch if session is not None else None,
            "rpoSeconds": round(self.rpo_seconds(), 3),
            "pending": len(self._pending),
            "copying": len(self._claims),
            "retrying": sum(1 for item in self._pending.values() if item.attempts),
            "concurrency": self._settings.concurrency,
            "pollIntervalSeconds": self._settings.poll_interval_seconds,
            **self.stats.describe(),
        }


def blind_after(poll_interval_seconds: float) -> float:
    """How old the last complete look at Pinot may be before the loop counts as blind: one poll
    interval plus a margin (one more interval, at least 10 s) for a slow poll."""
    return poll_interval_seconds + max(poll_interval_seconds, 10.0)


__all__ = ["KIND", "BackupStats", "Outcome", "SegmentBackupLoop", "blind_after", "completed_at_ms"]
