"""The PostgreSQL backup loop: dumps every configured database while this agent leads its zone.

A dump streams to ``<zone>/postgres/<db>/<UTC stamp>-<nonce>.dump`` and becomes part of the
backup only once its ``dump`` entry is committed; a failed dump commits nothing and is retried
with backoff. The nonce keeps two writers of one zone (a fenced leader still finishing and its
successor) from ever overwriting each other's object, since ``dump`` does not write create-only.

After each good dump, retention removes what the log says is superseded, in log order: first a
``dump-deleted`` entry (no catalog offers the dump any longer), then the object; a crash in
between leaves an orphan for ``sweep_orphans``, never a listed dump without its bytes.

On-demand dumps (``/pause``) coalesce by one rule: a request joins the run that is queued and
not yet started, or else queues one; a queued run starts only after the run in progress ends.
So every caller gets a run of every database that started after its request, and any number of
callers arriving during one run cause exactly one more.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from az_agent.agent.backoff import backoff_delay
from az_agent.agent.config import ServiceConfig
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.observability.reports import KIND, describe_dump, failure_reason
from az_agent.drivers.errors import DriverError, NotFound
from az_agent.drivers.postgres.base import PostgresDumper
from az_agent.drivers.postgres.config import PostgresSettings, RetentionSettings
from az_agent.state import (
    Catalog,
    Clock,
    DumpDeletedPayload,
    DumpPayload,
    DumpRecord,
    Fenced,
    NotLeader,
)
from az_agent.state.keys import dump_key

log = logging.getLogger(__name__)


class DumpFailed(Exception):
    """An on-demand run did not dump every database; the others were committed all the same.

    ``failures`` maps each failed database to its error, ``records`` holds the committed dumps.
    """

    def __init__(self, failures: dict[str, str], records: list[DumpRecord]) -> None:
        detail = "; ".join(f"{db}: {error}" for db, error in failures.items())
        super().__init__(f"PostgreSQL dump failed for {len(failures)} database(s): {detail}")
        self.failures = failures
        self.records = records


def expired_dumps(
    records: Sequence[DumpRecord], retention: RetentionSettings, now: datetime
) -> list[DumpRecord]:
    """The dumps retention removes, oldest first, judged by log order only (``seq``).

    Beyond the newest ``keep``; when ``maxAgeDays`` is set, only those of them that started
    longer ago than that (``keep`` is a floor). The newest dump is never among them.
    """
    ordered = sorted(records, key=lambda record: record.seq)
    doomed = ordered[: max(len(ordered) - max(retention.keep, 1), 0)]
    if retention.max_age_days is None:
        return doomed
    cutoff = now - timedelta(days=retention.max_age_days)
    return [record for record in doomed if record.started_at < cutoff]


@dataclass
class _DatabaseState:
    next_due: float = 0.0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_duration: float | None = None
    running: bool = False


class _Run:
    """One on-demand run, shared by every request that joined it before it started."""

    def __init__(self, reason: str) -> None:
        self.reasons = [reason]
        self.future: asyncio.Future[list[DumpRecord]] = asyncio.get_running_loop().create_future()
        # A caller cancelled while waiting must not leave "exception never retrieved" behind.
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def settle(self, outcomes: dict[str, DumpRecord | str]) -> None:
        records = [o for o in outcomes.values() if isinstance(o, DumpRecord)]
        failures = {db: o for db, o in outcomes.items() if isinstance(o, str)}
        if failures:
            self.future.set_exception(DumpFailed(failures, records))
        else:
            self.future.set_result(records)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class PostgresBackupLoop:
    """Scheduled and on-demand dumps, retention, status and recovery-point metrics.

    :meth:`run` works only while given a :class:`LeaderSession`; the agent cancels it when
    leadership ends. All timing goes through ``clock`` (tests drive it). Not thread-safe; one
    :meth:`run` at a time.
    """

    def __init__(
        self,
        dumper: PostgresDumper,
        settings: PostgresSettings,
        interval_seconds: float,
        metrics: AgentMetrics,
        clock: Clock,
        *,
        first_delay_seconds: float = 5.0,
        retry_min_seconds: float = 30.0,
        retry_max_seconds: float = 900.0,
        tick_seconds: float = 15.0,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be > 0, got {interval_seconds}")
        self._dumper = dumper
        self._settings = settings
        self._interval = interval_seconds
        self._metrics = metrics
        self._clock = clock
        self._first_delay = first_delay_seconds
        self._retry_min = retry_min_seconds
        self._retry_max = retry_max_seconds
        self._tick = tick_seconds
        self._states = {db: _DatabaseState() for db in settings.databases}
        self._origin = clock.monotonic()
        self._ever_ran = False
        self._session: LeaderSession | None = None
        self._catalog: Catalog | None = None
        self._queued: _Run | None = None
        self._wake = asyncio.Event()
        metrics.recovery.track(KIND, self.recovery_point)
        metrics.recovery.track_dumps(self.dump_ages)

    @classmethod
    def from_config(
        cls, dumper: PostgresDumper, config: ServiceConfig, metrics: AgentMetrics, clock: Clock
    ) -> PostgresBackupLoop:
        return cls(dumper, config.postgres, config.backup_interval_minutes * 60, metrics, clock)

    @property
    def databases(self) -> list[str]:
        return list(self._settings.databases)

    @property
    def is_running(self) -> bool:
        return self._session is not None

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, session: LeaderSession) -> None:
        """Dump soon after start, then every interval, until cancelled or no longer leader.

        ``Fenced``/``NotLeader`` from a commit end it quietly (the agent handles leadership);
        on-demand requests still waiting then fail with ``NotLeader``.
        """
        if self._session is not None:
            raise RuntimeError("the PostgreSQL backup loop is already running")
        self._begin(session)
        try:
            await self._serve(session)
        except (Fenced, NotLeader) as exc:
            log.info("zone %s: PostgreSQL backups stop: %s", session.zone, exc)
        finally:
            self._session = None
            queued, self._queued = self._queued, None
            if queued is not None:
                queued.fail(NotLeader("leadership ended before the requested dump ran"))

    def _begin(self, session: LeaderSession) -> None:
        self._session = session
        self._catalog = session.catalog
        now = self._clock.monotonic()
        if not self._ever_ran:
            self._origin, self._ever_ran = now, True
        for state in self._states.values():
            state.next_due = now + self._first_delay
            state.running = False
        log.info("zone %s: PostgreSQL backups start for epoch %d", session.zone, session.epoch)

    async def _serve(self, session: LeaderSession) -> None:
        while session.is_usable:
            run, self._queued = self._queued, None
            if run is not None:
                await self._serve_request(session, run)
                continue
            now = self._clock.monotonic()
            due = [db for db, state in self._states.items() if state.next_due <= now]
            if due:
                await self._dump_all(session, due, "scheduled")
                continue
            soonest = min((s.next_due for s in self._states.values()), default=now + self._tick)
            await self._wait(min(soonest - now, self._tick))
        log.info("zone %s: PostgreSQL backups stop: the log writer is fenced", session.zone)

    async def _serve_request(self, session: LeaderSession, run: _Run) -> None:
        try:
            outcomes = await self._dump_all(session, self.databases, "; ".join(run.reasons))
        except asyncio.CancelledError:
            run.fail(NotLeader("backups stopped while the requested dump ran"))
            raise
        except BaseException as exc:
            run.fail(exc)
            raise
        run.settle(outcomes)

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` on the clock, or less if an on-demand request arrives."""
        if not self._wake.is_set():
            sleeper = asyncio.ensure_future(self._clock.sleep(max(seconds, 0.0)))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
                await asyncio.gather(sleeper, waker, return_exceptions=True)
        self._wake.clear()

    async def dump_now(self, reason: str) -> list[DumpRecord]:
        """Dump every database now (coalesced as the module docstring says); the committed
        records in configuration order. Raises ``DumpFailed`` when a database failed,
        ``NotLeader`` when this agent is not leading (or stops leading before the run)."""
        if self._session is None:
            raise NotLeader("no PostgreSQL dump on demand: this agent does not lead its zone")
        run = self._queued
        if run is None:
            run = self._queued = _Run(reason)
            self._wake.set()
            log.info("PostgreSQL dump requested (%s)", reason)
        else:
            run.reasons.append(reason)
            log.info("PostgreSQL dump requested (%s), joining the one already queued", reason)
        return await asyncio.shield(run.future)

    # -- one dump ---------------------------------------------------------------------------

    async def _dump_all(
        self, session: LeaderSession, databases: list[str], reason: str
    ) -> dict[str, DumpRecord | str]:
        """Dump each database in turn: its record, or the error that stopped it."""
        return {db: await self._dump_one(session, db, reason) for db in databases}

    async def _dump_one(self, session: LeaderSession, db: str, reason: str) -> DumpRecord | str:
        state = self._states[db]
        started = self._clock.monotonic()
        stamp = self._clock.now().strftime("%Y%m%dT%H%M%SZ")
        key = dump_key(session.zone, db, f"{stamp}-{secrets.token_hex(4)}")
        state.running = True
        try:
            try:
                result = await self._dumper.dump(db, session.store, key)
            except Exception as exc:
                return self._failed(db, started, failure_reason(exc), exc)
            payload = DumpPayload(
                database=db,
                key=key,
                size=result.size,
                sha256=result.sha256,
                server_version=result.server_version.text,
                started_at=result.started_at,
                finished_at=result.finished_at,
            )
            try:
                entry = await session.commit(payload)
            except (Fenced, NotLeader):
                log.warning("dump of %s at %s not committed: no longer leader (orphan)", db, key)
                raise
            except DriverError as exc:  # outcome unknown; the object is swept if it did not land
                return self._failed(db, started, "commit", exc)
        finally:
            state.running = False
        record = DumpRecord.from_entry(entry, payload)
        self._succeeded(db, started, record, reason)
        await self._retain(session, db)
        return record

    def _succeeded(self, db: str, started: float, record: DumpRecord, reason: str) -> None:
        state = self._states[db]
        state.last_duration = self._clock.monotonic() - started
        state.consecutive_failures = 0
        state.next_due = started + self._interval
        self._metrics.dump_duration.labels(database=db).set(state.last_duration)
        self._metrics.dump_size.labels(database=db).set(record.size)
        log.info(
            "committed dump of %s as entry %d (%d bytes in %.1f s, %s): %s",
            db,
            record.seq,
            record.size,
            state.last_duration,
            reason,
            record.key,
        )

    def _failed(self, db: str, started: float, reason: str, exc: Exception) -> str:
        state = self._states[db]
        state.failures += 1
        state.consecutive_failures += 1
        state.last_error = f"{type(exc).__name__}: {exc}"
        state.last_error_at = self._clock.now()
        state.last_duration = self._clock.monotonic() - started
        backoff = backoff_delay(
            state.consecutive_failures, self._retry_min, self._retry_max, jitter=False
        )
        delay = min(backoff, self._interval)
        state.next_due = self._clock.monotonic() + delay
        self._metrics.backup_failures.labels(kind=KIND, reason=reason).inc()
        log.warning(
            "dump of %s failed (%s, %d in a row), nothing committed; retrying in %.0f s: %s",
            db,
            reason,
            state.consecutive_failures,
            delay,
            state.last_error,
            exc_info=not isinstance(exc, DriverError),
        )
        return state.last_error

    # -- retention --------------------------------------------------------------------------

    async def _retain(self, session: LeaderSession, db: str) -> None:
        """Remove the dumps retention no longer keeps: entry first, then the object."""
        records = session.catalog.dumps(db)
        for record in expired_dumps(records, self._settings.retention, self._clock.now()):
            payload = DumpDeletedPayload(database=db, dump_seq=record.seq, key=record.key)
            try:
                entry = await session.commit(payload)
            except DriverError as exc:
                log.warning("retention of %s postponed, entry not written: %s", db, exc)
                return
            log.info(
                "retention removed dump %d of %s (started %s) at entry %d; deleting %s",
                record.seq,
                db,
                record.started_at.isoformat(),
                entry.seq,
                record.key,
            )
            try:
                await session.store.delete(record.key)
            except NotFound:
                pass
            except DriverError as exc:
                log.warning("could not delete %s, left to the orphan sweep: %s", record.key, exc)

    # -- status and metrics -----------------------------------------------------------------

    def _age(self, db: str) -> float:
        """Age of the newest good dump; a database never dumped counts from the loop's start."""
        newest = self._catalog.newest_dump(db) if self._catalog is not None else None
        if newest is None:
            return max(self._clock.monotonic() - self._origin, 0.0)
        return max((self._clock.now() - newest.started_at).total_seconds(), 0.0)

    def rpo_seconds(self) -> float:
        """The recovery point of configuration: the oldest of the newest dumps' ages."""
        return max((self._age(db) for db in self._states), default=0.0)

    def recovery_point(self) -> float | None:
        """:meth:`rpo_seconds` while a session backs up; None otherwise (a standby or paused
        zone dumps nothing, so it has no recovery point to export)."""
        return self.rpo_seconds() if self._session is not None else None

    def dump_ages(self) -> dict[str, float] | None:
        """Per database, the age of its newest good dump, while a session backs up."""
        if self._session is None:
            return None
        return {db: self._age(db) for db in self._states}

    def status(self) -> dict[str, Any]:
        """JSON-ready: leadership, the recovery point and, per database, its newest dump."""
        session = self._session
        return {
            "leading": session is not None,
            "epoch": session.epoch if session is not None else None,
            "intervalSeconds": self._interval,
            "rpoSeconds": self.rpo_seconds(),
            "databases": {db: self._database_status(db) for db in self._states},
        }

    def _database_status(self, db: str) -> dict[str, Any]:
        state = self._states[db]
        now, mono = self._clock.now(), self._clock.monotonic()
        newest = self._catalog.newest_dump(db) if self._catalog is not None else None
        next_in = None if self._session is None else max(state.next_due - mono, 0.0)
        next_at = None if next_in is None else now + timedelta(seconds=next_in)
        return {
            "newestDump": None if newest is None else describe_dump(newest, now),
            "ageSeconds": self._age(db),
            "lastDurationSeconds": state.last_duration,
            "lastError": state.last_error,
            "lastErrorAt": state.last_error_at.isoformat() if state.last_error_at else None,
            "failures": state.failures,
            "consecutiveFailures": state.consecutive_failures,
            "running": state.running,
            "nextRunInSeconds": next_in,
            "nextRunAt": None if next_at is None else next_at.isoformat(),
        }
