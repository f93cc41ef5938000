"""Warm standby (``standby.mode: warm``): follow the primary's log so an activation moves only
the delta.

While the agent is ``STANDBY``, :class:`WarmFollower` takes a *follow step* every
``standby.followIntervalSeconds`` against the group's primary zone (the primary record the lease
watch reads every round, when it names another zone):

1. the catalog of that zone is brought up to date incrementally (``refresh_catalog``: only the
   entries committed since the last step are read; a fresh ``load_catalog`` only at the first
   step, when the primary changes, or when the log no longer holds the entries after ours);
2. missing schemas and tables are created with the activation's own
   :func:`~az_agent.agent.restore.pinot.restore_table_configs`: a REALTIME table is paused right
   after its creation (the restore's pause comment), so it does not consume here; one without
   any backed-up segment yet waits for a step that finds segments for it;
3. every live segment the local Pinot lacks (by name and CRC) is uploaded by the activation's
   :class:`~az_agent.agent.restore.rehydrate.Rehydrator`, and segments the primary deleted
   (``segment-deleted``) are deleted here too;
4. with databases configured, the newest dumps are restored into shadow databases
   (:func:`~az_agent.agent.standby.shadow.follow_dumps`), which the activation swaps in.

An activation then re-plans against this Pinot: segments already followed are "already present"
and only what arrived since the last step moves; its ``resume-consumption`` phase resumes the
tables paused here, as it resumes those it created itself. The activation stops the follower
first (:meth:`WarmFollower.stop`: the step in flight is cancelled and awaited) so that no follow
step touches Pinot or the shadow databases while its phases do.

Lag, in ``/status`` ``standby`` and ``az_agent_standby_behind_{entries,seconds}``: entries of the
primary's log not applied yet, and how long the oldest of them has been waiting (replication
lag as usually measured: it grows while steps fail, however fast the primary writes); both 0 when
caught up. A failed step is logged, kept as ``lastError`` and retried at the next interval; a
corrupt or truncated primary log is a follower's problem, never this agent's ``FAILED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from az_agent.agent.deps import AgentDeps
from az_agent.agent.restore.pinot import record_table, restore_table_configs
from az_agent.agent.restore.rehydrate import Rehydrator, plan_rehydration
from az_agent.drivers.errors import DriverError, NotFound
from az_agent.drivers.pinot.models import TableRef
from az_agent.state import (
    Catalog,
    StateError,
    load_catalog,
    read_entry,
    refresh_catalog,
)
from az_agent.state.log import entry_exists

log = logging.getLogger(__name__)


class ShadowsNotFollowed(Exception):
    """Some shadow databases could not be brought up to date (the segments were)."""


EXPECTED_FAILURES = (DriverError, StateError, TimeoutError, ShadowsNotFollowed)
"""A step failing with these is retried at the next interval (``LogCorrupted`` is a
``StateError``: the catalog is reloaded then)."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one follow step did, for the log and the tests."""

    zone: str
    seq: int
    tables_created: int
    segments_uploaded: int
    segments_present: int
    segments_deleted: int
    databases: dict[str, str]

    def sentence(self) -> str:
        text = (
            f"followed zone {self.zone} to entry {self.seq}: {self.segments_uploaded} segments "
            f"uploaded, {self.segments_present} already present, {self.segments_deleted} "
            f"deleted, {self.tables_created} tables created"
        )
        if self.databases:
            text += ", shadow databases " + ", ".join(
                f"{db} at {key}" for db, key in sorted(self.databases.items())
            )
        return text


class WarmFollower:
    """The follow loop of a warm standby; see the module docstring."""

    def __init__(
        self,
        deps: AgentDeps,
        *,
        zone: str,
        primary_zone: Callable[[], str | None],
        is_standby: Callable[[], bool],
    ) -> None:
        self.deps = deps
        self.zone = zone
        self._primary_zone = primary_zone
        self._is_standby = is_standby
        self.catalog: Catalog | None = None
        self.following: str | None = None
        """The zone followed while STANDBY; None otherwise (or while the primary is unknown)."""
        self.followed_seq = 0
        """The primary's log is applied to this zone through this entry."""
        self.tail_seq = 0
        """The primary's newest entry, as the last step read it."""
        self.pending_since: datetime | None = None
        """Commit time of the oldest entry read but not applied (None when caught up)."""
        self.last_step: datetime | None = None
        self.last_error: str | None = None
        self.last_result: StepResult | None = None
        self._step: asyncio.Task[StepResult | None] | None = None
        self._wake = asyncio.Event()
        self._seq_zone: str | None = None
        """The zone ``followed_seq`` counts in."""

    def catalog_of(self, zone: str) -> Catalog | None:
        """The catalog of ``zone`` as the last step read it, for an activation to refresh
        instead of reading the whole log (None when not following ``zone``)."""
        catalog = self.catalog
        return catalog if catalog is not None and catalog.zone == zone else None

    # ------------------------------------------------------------------------- lag

    @property
    def behind_entries(self) -> int:
        return max(0, self.tail_seq - self.followed_seq)

    def behind_seconds(self, now: datetime | None = None) -> float:
        if self.behind_entries == 0 or self.pending_since is None:
            return 0.0
        now = now or self.deps.clock.now()
        return max(0.0, (now - self.pending_since).total_seconds())

    def lag(self) -> tuple[float, float] | None:
        """(entries, seconds) behind for the metrics; None while not following."""
        if self.following is None:
            return None
        return float(self.behind_entries), self.behind_seconds()

    def describe(self, now: datetime) -> dict[str, Any]:
        """``/status`` ``standby`` of a warm standby."""
        return {
            "mode": "warm",
            "following": self.following,
            "behindEntries": self.behind_entries,
            "behindSeconds": round(self.behind_seconds(now), 3),
            "followedSeq": self.followed_seq,
            "lastStep": self.last_step.isoformat() if self.last_step else None,
            "lastError": self.last_error,
        }

    # ------------------------------------------------------------------------ loop

    async def run(self) -> None:
        """Until cancelled: a step every interval while STANDBY (idle otherwise)."""
        service = self.deps.config.service
        interval = service.standby.follow_interval_seconds
        while True:
            wait = interval
            self._wake.clear()  # a wake() from now on asks for a step after this one
            if self._is_standby():
                step = asyncio.ensure_future(self.step())
                self._step = step
                try:
                    await asyncio.wait({step})  # a stop() cancels the step, not this loop
                finally:
                    if not step.done():  # this loop is cancelled: so is its step
                        step.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await step
                    self._step = None
                if not step.cancelled():
                    step.result()  # an unexpected error: the supervisor logs and restarts
                if self.following is None:  # the primary is not known yet: look every round
                    wait = min(interval, service.lease.retry_period_seconds)
            else:
                self.following = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def wake(self) -> None:
        """Step now instead of at the end of the interval (after the step in flight, if any)."""
        self._wake.set()

    @property
    def stepping(self) -> bool:
        """Whether a follow step is in flight."""
        return self._step is not None and not self._step.done()

    async def stop(self) -> None:
        """Cancel the step in flight and wait until it has ended. Called by an operation before
        its phases touch Pinot; no step starts afterwards unless the agent is STANDBY again."""
        step = self._step
        if step is not None and not step.done():
            step.cancel()
            await asyncio.wait({step})
            log.info("warm standby: follow step stopped for the operation")
        self.following = None

    # ------------------------------------------------------------------------ step

    async def step(self) -> StepResult | None:
        """One follow step (the module docstring); None when there is no zone to follow."""
        source = self._primary_zone()
        if source is None or source == self.zone:
            self.following = None
            return None
        self.following = source
        try:
            result = await self._follow(source)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.last_step = self.deps.clock.now()
            self.last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            if isinstance(exc, StateError):  # a gap or a corrupt entry: start over next time
                self.catalog = None
            if not isinstance(exc, EXPECTED_FAILURES):
                raise
            log.warning("warm standby: following zone %s failed: %s", source, self.last_error)
            return None
        self.last_step = self.deps.clock.now()
        self.last_error = None
        self.last_result = result
        log.info("warm standby: %s", result.sentence())
        return result

    async def _follow(self, source: str) -> StepResult:
        catalog = await self._refreshed(source)
        self.tail_seq = catalog.last_seq
        if self.tail_seq > self.followed_seq and self.pending_since is None:
            self.pending_since = await self._entry_time(source, catalog)
        deps = self.deps
        created = await restore_table_configs(
            deps.pinot, deps.store, catalog, skip_empty_realtime=True
        )
        plan = await plan_rehydration(deps.pinot, catalog)
        settings = deps.config.service.rehydration
        rehydrator = Rehydrator(
            deps.pinot,
            deps.store,
            concurrency=settings.concurrency,
            batch_size=settings.batch_size,
        )
        await rehydrator.run(plan)
        deleted = await self._delete_deleted(catalog)
        databases = await self._follow_dumps(catalog)
        self.followed_seq = catalog.last_seq
        self.pending_since = None
        return StepResult(
            zone=source,
            seq=catalog.last_seq,
            tables_created=len(created),
            segments_uploaded=plan.segments_total,
            segments_present=plan.present,
            segments_deleted=deleted,
            databases=databases,
        )

    async def _refreshed(self, source: str) -> Catalog:
        """The source's catalog, read incrementally when possible."""
        store = self.deps.store
        catalog = self.catalog
        if catalog is not None and catalog.zone == source:
            if await refresh_catalog(store, catalog) > 0:
                return catalog
            # Nothing new, or the entries after ours were removed by the primary's retention
            # (we were stopped longer than it keeps them). It removes the oldest first, so while
            # our last entry is there, nothing after it has gone: one HEAD tells which.
            if catalog.last_seq == 0 or await entry_exists(store, source, catalog.last_seq):
                return catalog
            log.warning(
                "warm standby: zone %s's log no longer holds entry %d; reloading its catalog",
                source,
                catalog.last_seq + 1,
            )
        if self._seq_zone != source:  # a new primary: start over
            self.followed_seq, self.pending_since, self._seq_zone = 0, None, source
        self.catalog = catalog = await load_catalog(store, source)
        return catalog

    async def _entry_time(self, source: str, catalog: Catalog) -> datetime:
        """Commit time of the oldest entry not applied yet (the newest one's when retention has
        removed it: a lower bound of the lag)."""
        for seq in (self.followed_seq + 1, catalog.last_seq):
            entry = await read_entry(self.deps.store, source, seq)
            if entry is not None:
                return entry.time
        return self.deps.clock.now()

    async def _delete_deleted(self, catalog: Catalog) -> int:
        """Delete here the segments the primary's log says Pinot deleted there.

        Tables a restore created lose them already (``restore_table_configs`` removes what the
        backup does not hold live); this covers tables that existed here before.
        """
        gone: dict[TableRef, set[str]] = {}
        for deletion in catalog.deletions():
            versions = catalog.versions(deletion.table, deletion.name)
            if versions:
                gone.setdefault(record_table(versions[-1]), set()).add(deletion.name)
        deleted = 0
        for table, names in sorted(gone.items()):
            try:
                present = set(await self.deps.pinot.segment_names(table))
            except NotFound:
                continue
            for name in sorted(names & present):
                await self.deps.pinot.delete_segment(table, name)
                deleted += 1
        return deleted

    async def _follow_dumps(self, catalog: Catalog) -> dict[str, str]:
        deps = self.deps
        databases = list(deps.config.service.postgres.databases)
        if deps.dumper is None or not databases:
            return {}
        from az_agent.agent.standby.shadow import ShadowsBehind, follow_dumps

        try:
            return await follow_dumps(deps.dumper, deps.store, catalog, databases)
        except ShadowsBehind as exc:
            raise ShadowsNotFollowed(str(exc)) from exc


__all__ = ["ShadowsNotFollowed", "StepResult", "WarmFollower"]
