"""The zone lease and the leader sessions it grants: the only lease loop the agent runs.

:meth:`LeaseKeeper.run` plays the lease rounds (acquire, renew, self-fencing at the renew
deadline) while the agent wants to lead; :class:`ZoneLeadership` turns each won lease into one
:class:`LeaderSession` (fence entry first, then the backup loops) and ends it when the lease is
lost, the writer is fenced, or a pause asks (a pause stops the backup loops first and commits its
handover through the session's still valid writer, so it is the term's last entry). Beside it,
one watch loop reads the zone's lease while this agent does not hold it (has another zone taken
this one over?) and keeps the leases of other zones observed, so their expiry is judged over
time on this agent's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from az_agent.agent.leadership.loops import ColdStart, DatabaseBackup, Retention, SegmentBackup
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.supervisor import Supervisor
from az_agent.drivers.errors import DriverError
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import (
    Clock,
    Fenced,
    FencePayload,
    LeaseKeeper,
    LeaseObservation,
    LeaseSettings,
    LeaseState,
    LogCorrupted,
    LogWriter,
    NotLeader,
    PrimaryLock,
    PrimaryObservation,
    PrimaryRecord,
    StateError,
    last_entry,
    load_catalog,
    write_checkpoint,
)

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_ENTRIES = 1_000
"""A reader (an activation, a warm standby, a restarted leader) GETs each entry after the
newest checkpoint, a few ms each on S3: 1,000 keep that to seconds. Writing a checkpoint
costs a few seconds of worker-thread CPU per million segments (the tables that changed are
rewritten, see state/columns.py)."""
CHECKPOINT_CHECK_SECONDS = 30.0


@dataclass
class LeadershipDeps:
    """What leading a zone needs from the agent's wiring."""

    zone: str
    group: str
    holder: str
    store: ObjectStore
    clock: Clock
    metrics: AgentMetrics
    settings: LeaseSettings
    segment_backup: SegmentBackup
    database_backup: DatabaseBackup | None
    supervisor: Supervisor
    """Runs every loop below (lease, watch, sessions, backups): a crash restarts only it."""
    retention: Retention | None = None
    cold_standby: ColdStart | None = None
    """Records the sizes of the zone's workloads while it leads (``coldStandby``)."""


class ZoneLeadership:
    """Leads the zone while ``wants()`` holds; reports fencing and takeovers through callbacks.

    ``wants()`` is the agent's state machine speaking (ACTIVE or PAUSING, not suspended);
    ``on_fenced(reason)`` is called when a newer epoch or term fenced this agent's writer;
    ``on_taken_over(by)`` when another zone's activation paused this zone's lease under its
    own name and ended this zone's log with its fence.
    """

    def __init__(
        self,
        deps: LeadershipDeps,
        *,
        wants: Callable[[], bool],
        on_fenced: Callable[[str], None],
        on_taken_over: Callable[[str], None],
    ) -> None:
        self.deps = deps
        self.keeper = LeaseKeeper(
            deps.store, deps.zone, deps.holder, deps.settings, clock=deps.clock
        )
        self.primary_lock = PrimaryLock(deps.store, deps.group, clock=deps.clock)
        self.primary: PrimaryObservation | None = None
        """The group's primary record as last read (every lease round, on either zone)."""
        self.session: LeaderSession | None = None
        self._last_session: LeaderSession | None = None
        self._wants = wants
        self._on_fenced = on_fenced
        self._on_taken_over = on_taken_over
        self._suspended = False
        self._stop = asyncio.Event()
        self._ended = asyncio.Event()
        self._ended.set()
        self._halt = asyncio.Event()  # a pause asks the session's backup loops to stop...
        self._halted = asyncio.Event()  # ...and they have (or the session ended)
        self._halted.set()
        self._wake = asyncio.Event()
        self._observers: dict[str, LeaseKeeper] = {}
        self._judged_version: str | None = None

    # ----------------------------------------------------------------- control

    def wants_leadership(self) -> bool:
        return not self._suspended and self._wants()

    def end_session(self) -> None:
        """End the current leader session, if any, at once (the agent failed: stop writing);
        a new one starts only when leading is wanted again."""
        self._stop.set()
        self._wake.set()

    def state_changed(self) -> None:
        """The agent's state moved: re-evaluate (a pause lifts suspension by ending)."""
        self._wake.set()

    def unsuspend(self) -> None:
        """Leading is wanted again (ACTIVE, or a retried pause that needs the session). A
        session whose backup loops a (failed) pause stopped ends, so a fresh one runs them."""
        self._suspended = False
        if self.session is not None and self._halt.is_set():
            self._stop.set()
        self._wake.set()

    async def stop_backups(self) -> LeaderSession:
        """Stop the session's backup loops and wait until they have, keeping the session.

        Its writer stays valid while the lease is held, so a pause can then commit the term's
        last entry knowing that nothing appends after it, and :meth:`stop_session` ends it.
        Raises ``NotLeader`` when no session runs or it ended meanwhile.
        """
        session = self.session
        if session is None:
            raise NotLeader(f"zone {self.deps.zone}: not leading, no backup loops to stop")
        self._halt.set()
        await self._halted.wait()
        if self.session is not session:
            raise NotLeader(f"zone {self.deps.zone}: the leader session ended meanwhile")
        return session

    async def stop_session(self) -> None:
        """End the current leader session and wait until its loops have stopped; no new
        session starts until :meth:`unsuspend`."""
        self._suspended = True
        self._stop.set()
        await self._ended.wait()

    async def checkpoint_on_exit(self) -> None:
        """The agent stops cleanly while it leads: checkpoint the last session's catalog
        (:meth:`LeaderSession.checkpoint_last`), unless a newer writer fenced it."""
        session = self._last_session
        if session is not None and session.is_usable and self.keeper.is_leader:
            await session.checkpoint_last()

    # ---------------------------------------------------------------- observers

    def source_keeper(self, zone: str) -> LeaseKeeper:
        """A keeper for another zone's lease, kept (and observed every round) so that its
        expiry is judged over time, as Kubernetes leader election does."""
        keeper = self._observers.get(zone)
        if keeper is None:
            keeper = LeaseKeeper(
                self.deps.store, zone, self.deps.holder, self.deps.settings, clock=self.deps.clock
            )
            self._observers[zone] = keeper
        return keeper

    def forget_source(self, zone: str) -> None:
        """Stop observing ``zone`` (it turned out not to exist)."""
        self._observers.pop(zone, None)

    # -------------------------------------------------------------------- loops

    async def run(self) -> None:
        """Until cancelled: the lease rounds, the watch, and one session per won lease."""
        supervisor = self.deps.supervisor
        async with asyncio.TaskGroup() as group:
            supervisor.start(
                group,
                "lease",
                lambda: self.keeper.run(wants=self.wants_leadership, release_on_exit=False),
            )
            supervisor.start(group, "lease-watch", self._watch)
            supervisor.start(group, "leader-sessions", self._sessions)

    async def _watch(self) -> None:
        period = self.deps.settings.retry_period_seconds
        while True:
            try:
                await self._check_primary()
                if not self.keeper.is_leader:
                    await self._check_taken_over(await self.keeper.observe())
                for observer in list(self._observers.values()):
                    await observer.observe()
            except (DriverError, StateError) as exc:
                self.deps.metrics.errors.labels(kind="lease").inc()
                log.warning("lease watch round failed: %s", exc)
            await self.deps.clock.sleep(period)

    async def _check_primary(self) -> None:
        """Read the group's primary record; a session writing under an older term, or for a
        zone that is no longer primary, ends at once and the agent is fenced (it does not wait
        for its next append to meet the activation's fence entry)."""
        observation = self._observed(await self.primary_lock.read())
        session, record = self.session, observation.record
        if session is None or record is None:
            return
        if record.zone != self.deps.zone or record.term > session.term:
            self._stop.set()
            self._on_fenced(_superseded(record, session.term))

    def _observed(self, observation: PrimaryObservation) -> PrimaryObservation:
        """Keep the record ``/status`` shows and the primary gauges in step: a session that
        starts reads the record too, and until the next watch round ``/metrics`` showed the
        term before (an e2e test under load saw term 3 on ``/status`` and 2 on ``/metrics``)."""
        self.primary = observation
        self.deps.metrics.primary_term.set(observation.term)
        self.deps.metrics.primary.set(1 if observation.zone == self.deps.zone else 0)
        return observation

    async def _check_taken_over(self, observation: LeaseObservation) -> None:
        """Another zone's agent activated from this zone: our lease is paused under its name
        and our log ends with its fence. (A paused lease held by an earlier incarnation of this
        agent is not a takeover: then the log ends with that incarnation's ``paused`` entry.)"""
        record = observation.record
        if record is None or record.state is not LeaseState.PAUSED:
            return
        if record.holder == self.deps.holder or observation.version == self._judged_version:
            return
        self._judged_version = observation.version
        newest = await last_entry(self.deps.store, self.deps.zone)
        if newest is not None and isinstance(newest.payload, FencePayload):
            self._on_taken_over(newest.payload.by)

    async def _sessions(self) -> None:
        while True:
            if not self.wants_leadership():
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.keeper.wait_leader()
            if not self.wants_leadership():
                continue
            if not self.keeper.is_leader:  # a stale signal: wait for the next lease round
                await self.deps.clock.sleep(self.deps.settings.retry_period_seconds)
                continue
            await self._lead()

    async def _lead(self) -> None:
        """One leader session: fence the log with our epoch, then run the backup loops."""
        deps, keeper = self.deps, self.keeper
        epoch = keeper.epoch
        assert epoch is not None
        try:
            record = await self._primary_for_leading()
            if record is None:
                return
            writer = LogWriter(
                deps.store,
                deps.zone,
                epoch,
                deps.holder,
                clock=deps.clock,
                guard=lambda: keeper.is_leader and keeper.epoch == epoch,
                term=record.term,
            )
            await writer.write_fence(reason=f"{deps.holder} leads zone {deps.zone}")
            catalog = await load_catalog(deps.store, deps.zone)
        except Fenced as exc:
            self._on_fenced(str(exc))
            return
        except LogCorrupted:
            raise  # no retry fixes it: the supervisor fails the agent with the reason
        except (NotLeader, DriverError, StateError) as exc:
            log.warning("could not start leading: %s", exc)
            await deps.clock.sleep(deps.settings.retry_period_seconds)
            return
        session = LeaderSession(
            deps.zone, epoch, deps.store, writer, catalog, deps.metrics, deps.clock, record.term
        )
        self.session = self._last_session = session
        self._stop.clear()
        self._ended.clear()
        self._halt.clear()
        self._halted.clear()
        log.info(
            "leading zone %s with epoch %d, term %d, from entry %d",
            deps.zone,
            epoch,
            record.term,
            catalog.last_seq,
        )
        try:
            # The body waits and ends the loops itself: no stop signal is raised through the
            # group, so a cancellation of this task (shutdown) is never mistaken for one and
            # swallowed (Python 3.11's TaskGroup would drop it; the chaos tier found agents
            # that never stopped).
            async with asyncio.TaskGroup() as group:
                backups = group.create_task(self._backups(session), name="backups")
                await self._watch_session(session)
                backups.cancel()
        finally:
            self.session = None
            self._ended.set()
        if writer.is_fenced:
            self._on_fenced(f"zone {deps.zone} was fenced by a newer epoch")

    async def _primary_for_leading(self) -> PrimaryRecord | None:
        """The primary record naming this zone, created if the group has none yet (buckets
        from before the record: the first leader of a group is primary). None, with the agent
        fenced, when another zone is primary: this zone must not back up."""
        record = await self.primary_lock.ensure(self.deps.zone)
        self._observed(await self.primary_lock.read())
        if record.zone == self.deps.zone:
            return record
        self._on_fenced(
            f"zone {record.zone} is the primary of failover group {self.deps.group} "
            f"(term {record.term}); zone {self.deps.zone} does not lead"
        )
        return None

    async def _backups(self, session: LeaderSession) -> None:
        """The session's backup loops, until the session ends or a pause halts them."""
        deps, supervisor = self.deps, self.deps.supervisor
        try:
            async with asyncio.TaskGroup() as loops:
                started = [
                    supervisor.start(
                        loops, "segment-backup", lambda: deps.segment_backup.run(session)
                    ),
                    supervisor.start(loops, "checkpoints", lambda: self._checkpoints(session)),
                    supervisor.start(
                        loops, "retention", lambda: _retention(deps.retention, session)
                    ),
                ]
                database = deps.database_backup
                if database is not None:
                    started.append(
                        supervisor.start(loops, "dump-schedule", lambda: database.run(session))
                    )
                cold = deps.cold_standby
                if cold is not None:
                    started.append(
                        supervisor.start(loops, "workload-sizes", lambda: cold.run(session))
                    )
                await self._halt.wait()
                for task in started:
                    task.cancel()
            log.info("zone %s: backup loops stopped before the handover", deps.zone)
        finally:
            self._halted.set()

    async def _watch_session(self, session: LeaderSession) -> None:
        period = min(1.0, self.deps.settings.retry_period_seconds)
        while self.keeper.is_leader and session.is_usable and not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), period)

    async def _checkpoints(self, session: LeaderSession) -> None:
        """Checkpoint the catalog every so many entries after its newest checkpoint (counted
        from the checkpoint, not from this session's start: a restart does not reset it)."""
        catalog = session.catalog
        while True:
            await self.deps.clock.sleep(CHECKPOINT_CHECK_SECONDS)
            if catalog.last_seq - catalog.checkpoint_seq >= CHECKPOINT_EVERY_ENTRIES:
                try:
                    await write_checkpoint(self.deps.store, catalog)
                except DriverError as exc:
                    log.warning("checkpoint failed: %s", exc)


async def _retention(retention: Retention | None, session: LeaderSession) -> None:
    if retention is not None:
        await retention.run(session)


def _superseded(record: PrimaryRecord, term: int) -> str:
    return (
        f"zone {record.zone} is primary with term {record.term} "
        f"(this agent wrote under term {term})"
    )
