"""``POST /activate?zone=<source>``: restore another zone's backups here and take over.

Phases, each checkpointed in ``<own zone>/operations/current.json`` so a restarted agent resumes
where it stopped (done phases are skipped; rehydration re-plans against what Pinot already has):

1. ``pause-source`` - with ``namespace``, the source agent was paused through the Kubernetes
   API server's service proxy while ``/activate`` was answered, before this operation existed
   (:mod:`.source_pause`: a refusal is a 409 unless ``forcePause``); the phase records how;
2. ``claim-primary`` - the commit point: one compare-and-swap of the group's primary record from
   the source to this zone, with the next term. It runs while ``/activate`` is answered: a
   concurrent activation (the other side's, or this side's) loses it, stops before changing
   anything and gets 409 naming the winner;
3. ``silence-alerts`` - this zone's alerts, until an operator calls ``/resume``;
4. ``fence-source`` - take the source's lease with a higher epoch, write a fence entry carrying
   the new term in its log (any writer still there is refused from then on), leave its lease
   ``paused`` so its agent does not take it back;
5. ``scale-up`` - a cold standby (``coldStandby``) scales its Deployments and StatefulSets up
   from zero and waits until they report ready, before anything is restored into them; the
   phase's detail shows the waiting (``2/3 workloads ready: pinot-server 1/3``);
6. ``restore-postgres`` - the newest dump of each database at or before ``latestTime``; where a
   warm standby's shadow database already holds that dump, the shadow is swapped in instead;
7. ``restore-pinot-config`` - missing schemas and table configs;
8. ``rehydrate-segments`` - every committed segment the local Pinot lacks, bounded workers;
9. ``resume-consumption`` - each partition continues from its newest restored segment's end;
10. ``take-over-zone`` - this zone's lease with the next epoch; the agent becomes ``ACTIVE``.

An operation journaled by an agent that knew fewer phases runs the phases it lists.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

from az_agent.agent.errors import InvalidParameter, UnknownTarget, WrongState
from az_agent.agent.observability.logs import log_context
from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.journal import Operation
from az_agent.agent.operations.phases import Step, fail, run_phases
from az_agent.agent.operations.rehydration import rehydrate_segments
from az_agent.agent.operations.requests import ActivateRequest
from az_agent.agent.operations.silences import silence_alerts
from az_agent.agent.operations.source_pause import NOT_ASKED, pause_source
from az_agent.agent.operations.states import Request, transition
from az_agent.agent.restore.pinot import restore_table_configs, resume_after_restore
from az_agent.agent.restore.postgres import (
    NoBackup,
    RestoreError,
    RestoreProgress,
    find_shadows,
    plan_restore,
    restore_databases,
)
from az_agent.agent.restore.rehydrate import plan_rehydration
from az_agent.drivers.errors import DriverError, NotFound
from az_agent.state import (
    Catalog,
    LeaseHeld,
    LeaseObservation,
    LeaseState,
    LogWriter,
    PrimaryLock,
    PrimaryObservation,
    PrimaryTaken,
    StateError,
    last_entry,
    load_catalog,
    refresh_catalog,
)
from az_agent.state.concurrent import beside
from az_agent.state.log import entry_exists

log = logging.getLogger(__name__)

PHASES = (
    "pause-source",
    "claim-primary",
    "silence-alerts",
    "fence-source",
    "scale-up",
    "restore-postgres",
    "restore-pinot-config",
    "rehydrate-segments",
    "resume-consumption",
    "take-over-zone",
)
EXPECTED_FAILURES = (DriverError, StateError, RestoreError, TimeoutError)
"""Failures an operator can act on from their message alone (logged without a traceback);
``PrimaryTaken`` is a ``StateError``."""
ESTIMATED_BYTES_PER_SECOND = 50 << 20
"""Used by dryRun's duration estimate until this agent has measured a rehydration."""


class Activation:
    """One activation; :meth:`prepare` validates (4xx) and :meth:`run` carries it out."""

    def __init__(
        self, agent: AgentContext, request: ActivateRequest, op: Operation | None = None
    ) -> None:
        self.agent = agent
        self.request = request
        self.op = op
        self.catalog: Catalog | None = None
        self._catalog_closed = False
        """Whether :attr:`catalog` has been read to the end of the source's log after the fence."""
        self.primary: PrimaryObservation | None = None
        """The primary record as validated by :meth:`prepare`: the claim's expected version."""
        self.source_pause = NOT_ASKED
        """How the source's pause went (:func:`pause_source`), for the ``pause-source`` phase."""
        self.refusal: WrongState | None = None
        """Why the real call would be refused (a dry run notes it and goes on planning)."""

    @classmethod
    def resume(cls, agent: AgentContext, op: Operation) -> Activation:
        """Continue an activation found running in the bucket after a restart."""
        saved = op.request
        latest = saved.get("latestTime")
        request = ActivateRequest(
            zone=str(op.source_zone),
            latest_time=datetime.fromisoformat(latest) if latest else None,
            batch_size=saved.get("batchSize"),
            force=True,  # the source was fenced (or is being fenced) by this very operation
            namespace=None,
            automatic=saved.get("automatic"),
        )
        log.info("resuming activation %s from zone %s after a restart", op.id, op.source_zone)
        return cls(agent, request, op)

    # -------------------------------------------------------------- validation

    async def prepare(self) -> None:
        """Refuse what cannot work before anything is written: 400, 404, 409."""
        agent, source = self.agent, self.request.zone
        if source == agent.zone:
            raise InvalidParameter(
                "zone", f"{source!r} is this agent's own zone; name the source zone"
            )
        observation, primary = await self._read_lease_and_primary()
        record = observation.record
        if record is None and await last_entry(agent.deps.store, source) is None:
            agent.forget_source(source)
            raise UnknownTarget(f"zone {source!r} has no lease and no backups in this bucket")
        if self.request.namespace is None:  # else after the source's pause, which ends it
            with self.noting_refusal():
                self._refuse_live(observation)
        with self.noting_refusal():
            self._check_primary(primary)
        followed = agent.followed_catalog(source)  # a warm standby's, read incrementally
        if followed is not None:
            await refresh_catalog(agent.deps.store, followed)
        self.catalog = followed or await load_catalog(agent.deps.store, source)
        try:
            self._plan_databases()
        except NoBackup as exc:
            raise UnknownTarget(str(exc)) from exc
        if self.catalog.segment_count == 0 and not self._databases():
            raise UnknownTarget(f"zone {source!r} has nothing backed up")

    async def _read_lease_and_primary(self) -> tuple[LeaseObservation, PrimaryObservation]:
        """The source's lease and the group's primary record, read together (one round trip,
        not two); checked in prepare's order all the same."""
        observing = self.agent.source_keeper(self.request.zone).observe()
        return await beside(observing, self._primary_lock().read())

    @contextlib.contextmanager
    def noting_refusal(self) -> Iterator[None]:
        """A dry run notes the first refusal (``wouldBeRefused``) instead of raising it."""
        try:
            yield
        except WrongState as exc:
            if not self.request.dry_run:
                raise
            self.refusal = self.refusal or exc

    async def check_source_stopped(self) -> None:
        """After the source's pause (``namespace``): 409 while its lease is live, unless
        ``force``; ``namespace`` and ``forcePause`` never imply ``force``."""
        self._refuse_live(await self.agent.source_keeper(self.request.zone).observe())

    def _refuse_live(self, observation: LeaseObservation) -> None:
        record = observation.record
        if record is None or not observation.is_live or self.request.force:
            return
        wait = max(0.0, record.ttl_seconds - observation.seconds_unchanged)
        raise WrongState(
            f"zone {self.request.zone!r} is live: its lease (holder {record.holder}, epoch "
            f"{record.epoch}) changed {observation.seconds_unchanged:.0f}s ago. Pause it "
            "first, wait until it expires, or pass force=true if it is dead.",
            state=self.agent.state.value,
            retryAfterSeconds=round(wait, 1),
        )

    def _primary_lock(self) -> PrimaryLock:
        deps = self.agent.deps
        return PrimaryLock(deps.store, deps.config.service.group, clock=deps.clock)

    def _check_primary(self, observation: PrimaryObservation) -> None:
        """Only the group's primary can be activated from (no record: an older bucket, where
        the claim creates it)."""
        self.primary = observation
        record = observation.record
        if record is None or record.zone == self.request.zone:
            return
        whose = "this zone" if record.zone == self.agent.zone else f"zone {record.zone!r}"
        raise WrongState(
            f"zone {self.request.zone!r} is not the primary of failover group "
            f"{self._primary_lock().group}: {whose} is, with term {record.term}",
            state=self.agent.state.value,
            primaryZone=record.zone,
            term=record.term,
        )

    def _databases(self) -> list[str]:
        if self.agent.deps.dumper is None:
            return []
        return list(self.agent.deps.config.service.postgres.databases)

    def _plan_databases(self) -> Any:
        assert self.catalog is not None
        databases = self._databases()
        if not databases:
            return None
        return plan_restore(self.catalog, databases, self.request.latest_time)

    async def dry_run(self) -> dict[str, Any]:
        """The plan, with nothing written anywhere; ``wouldBeRefused`` holds the error the real
        call would get (the HTTP layer renders its status and reason), or None."""
        assert self.catalog is not None
        as_of = self.request.latest_time
        cold = self.agent.deps.cold_standby
        try:
            plan = await plan_rehydration(self.agent.deps.pinot, self.catalog, as_of)
            existing = {t.name_with_type for t in await self.agent.deps.pinot.list_tables()}
        except DriverError:
            if cold is None:
                raise
            # A cold zone's Pinot runs once the activation scaled it up: everything moves.
            plan, existing = await plan_rehydration(None, self.catalog, as_of), set()
        to_move, size = plan.segments_total, plan.bytes_total
        restore = self._plan_databases()
        if restore and self.agent.deps.dumper is not None:
            restore = await find_shadows(restore, self.agent.deps.dumper)  # swapped, not restored
        configs = self.catalog.table_configs(as_of=self.request.latest_time)
        estimate = size / ESTIMATED_BYTES_PER_SECOND
        return {
            "dryRun": True,
            "request": self.request.describe(),
            "workloads": await cold.plan() if cold is not None else None,
            "postgres": restore.describe() if restore else None,
            "tablesToCreate": sorted(name for name in configs if name not in existing),
            "segments": {"toMove": to_move, "bytesToMove": size},
            "segmentsAlreadyPresent": plan.present,
            "estimatedSeconds": round(estimate, 1),
            "wouldBeRefused": self.refusal,
        }

    # -------------------------------------------------------------- execution

    async def begin(self) -> Operation:
        """Journal the operation (intent first), then run its admission phases while the
        request waits: ``pause-source`` (which records the pause done before, refusals never
        get here) and the commit point ``claim-primary``. Nothing about the agent's state
        changes until the claim is won; a lost claim ends the operation refused and raises
        :class:`WrongState` (409)."""
        agent = self.agent
        self.op = op = Operation.start(
            "activate",
            PHASES,
            agent.deps.clock.now(),
            request=self.request.describe(),
            source_zone=self.request.zone,
        )
        await agent.journal.save(op)  # the intent, before the claim
        try:
            # The claim's end is recorded by run()'s first write: unrecorded, a resumed
            # activation claims again, which is idempotent for this operation.
            await run_phases(agent, op, self._work(), through="claim-primary", final_save=False)
        except PrimaryTaken as exc:
            await agent.journal.finish(op, f"{op.phase}: refused: {exc}")
            raise WrongState(
                f"activation refused: {exc}",
                state=agent.state.value,
                primaryZone=exc.zone,
                term=exc.term,
            ) from exc
        except WrongState as exc:
            await agent.journal.finish(op, f"{op.phase}: refused: {exc.detail}")
            raise
        except EXPECTED_FAILURES as exc:
            # The claim's outcome is unknown (a storage error): accept, and let run() retry it;
            # claim-primary is idempotent for this operation.
            log.warning("activation %s accepted with %s unsettled: %s", op.id, op.phase, exc)
        agent.operation = op
        agent.set_state(Request.ACTIVATE)
        return op

    async def run(self) -> None:
        op, agent = self.op, self.agent
        assert op is not None
        with log_context(operation=op.id, zone=agent.zone, source=self.request.zone):
            try:
                await run_phases(agent, op, self._work(), final_save=False)  # finish() records
            except Exception as exc:  # every failure ends FAILED with its reason, retryable
                await fail(agent, op, exc, expected=EXPECTED_FAILURES)
                return
            await agent.journal.finish(op)
            total = (op.finished_at - op.started_at).total_seconds() if op.finished_at else 0.0
            agent.deps.metrics.activation_duration.set(total)
            agent.set_state(Request.FINISH)
            log.info("activation from zone %s done in %.1fs", self.request.zone, total)

    def _work(self) -> list[Step]:
        """:meth:`_steps`, each phase with nothing to do here given as its detail alone (no
        journal write of its own: see :data:`~.phases.Step`)."""
        idle = self._idle()
        return [(name, idle.get(name, step)) for name, step in self._steps()]

    def _idle(self) -> dict[str, str]:
        """Phases with nothing to do on this agent, and why."""
        deps = self.agent.deps
        idle = {"pause-source": self.source_pause}  # done before the operation began
        if not deps.silences.enabled:
            idle["silence-alerts"] = "no Alertmanager configured"
        if deps.cold_standby is None:
            idle["scale-up"] = "no workloads configured"
        if deps.dumper is None or not self._databases():
            idle["restore-postgres"] = "no databases configured"
        return idle

    def _steps(self) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
        steps = [
            ("pause-source", self._pause_source),
            ("claim-primary", self._claim_primary),
            ("silence-alerts", self._silence),
            ("fence-source", self._fence_source),
            ("scale-up", self._scale_up),
            ("restore-postgres", self._restore_postgres),
            ("restore-pinot-config", self._restore_configs),
            ("rehydrate-segments", self._rehydrate),
            ("resume-consumption", self._resume_consumption),
            ("take-over-zone", self._take_over_zone),
        ]
        # An operation journaled before a phase existed (an upgrade mid-activation) lacks it.
        listed = {phase.name for phase in self.op.phases} if self.op else set(PHASES)
        return [(name, step) for name, step in steps if name in listed]

    async def _pause_source(self) -> str:
        """Done before the operation began (:func:`start_activation`): record how it went."""
        return self.source_pause

    async def _claim_primary(self) -> str:
        """One CAS of the primary record (idempotent for this operation: a resumed activation
        finds the record already naming this zone with its id)."""
        agent, op = self.agent, self.op
        assert op is not None
        lock = self._primary_lock()
        record = await lock.claim(
            source=self.request.zone,
            zone=agent.zone,
            operation_id=op.id,
            expected=self.primary,
            automatic=self.request.automatic,
        )
        self.primary = None  # a retry reads the record afresh
        op.result["term"] = record.term
        return f"zone {agent.zone} is primary of group {lock.group} with term {record.term}"

    @property
    def term(self) -> int:
        """The term this activation claimed (0 before ``claim-primary``)."""
        return int(self.op.result.get("term", 0)) if self.op else 0

    async def _silence(self) -> str:
        assert self.op is not None
        return await silence_alerts(self.agent, self.op, f"activation from {self.request.zone}")

    async def _fence_source(self) -> str:
        agent, source = self.agent, self.request.zone
        keeper = agent.source_keeper(source)
        # The log as prepare read it: the tail is searched from there (a few HEADs, not a dozen
        # twice), provided its last entry is still there.
        read = self.catalog.last_seq if self.catalog is not None else None
        epoch = await keeper.take_over(force=self.request.force, tail_hint=read)
        writer = LogWriter(
            agent.deps.store,
            source,
            epoch,
            agent.holder,
            clock=agent.deps.clock,
            term=self.term,
            tail_hint=read,
        )
        fence = await writer.write_fence(reason=f"activated by zone {agent.zone}")
        # The log is closed from here: the catalog is read to its end while the lease is left
        # paused (two independent round trips, not one after the other); both answer before
        # the phase ends or fails.
        await beside(keeper.release(LeaseState.PAUSED), self._close_catalog())
        assert self.op is not None
        self.op.epoch = epoch
        return f"zone {source} fenced at entry {fence.seq} with epoch {epoch}"

    async def _scale_up(self) -> str:
        """A cold zone's workloads, up from zero and ready before anything is restored."""
        cold, op = self.agent.deps.cold_standby, self.op
        if cold is None:
            return "no workloads configured"
        assert op is not None

        async def progress(line: str) -> None:
            op.get_phase("scale-up").detail = line
            await self.agent.journal.save(op)

        return await cold.scale_up(progress)

    async def _load_catalog(self) -> Catalog:
        """The source's catalog, brought up to the end of its log once after the fence (the log
        is closed then: nothing committed before the fence may be missed). Incrementally: a
        reload for every phase would read the whole log again each time."""
        store, source = self.agent.deps.store, self.request.zone
        fenced = self.op is not None and self.op.is_done("fence-source")
        if self.catalog is None:
            self.catalog = await load_catalog(store, source)
            self._catalog_closed = fenced
        elif fenced:
            await self._close_catalog()
        return self.catalog

    async def _close_catalog(self) -> None:
        """Bring the catalog read before the fence to the end of the log, once the fence is
        written (nothing is read while no catalog was: :meth:`_load_catalog` reads it whole)."""
        store, source, catalog = self.agent.deps.store, self.request.zone, self.catalog
        if catalog is None or self._catalog_closed:
            return
        # Nothing read: nothing new, or the entries after ours were removed by retention.
        # It removes the oldest first, so while our last entry is there nothing after it
        # has gone: one HEAD tells which (finding the tail took a dozen).
        read = await refresh_catalog(store, catalog)
        gone = read == 0 and catalog.last_seq > 0
        if gone and not await entry_exists(store, source, catalog.last_seq):
            self.catalog = await load_catalog(store, source)
        self._catalog_closed = True

    async def _restore_postgres(self) -> str:
        dumper = self.agent.deps.dumper
        databases = self._databases()
        if dumper is None or not databases:
            return "no databases configured"
        catalog = await self._load_catalog()
        plan = await find_shadows(
            plan_restore(catalog, databases, self.request.latest_time), dumper
        )
        assert self.op is not None
        self.op.result["postgres"] = plan.describe()

        async def progress(step: RestoreProgress) -> None:
            assert self.op is not None
            self.op.get_phase("restore-postgres").detail = f"{step.phase} {step.database}"
            await self.agent.journal.save(self.op)

        results = await restore_databases(
            plan,
            dumper,
            self.agent.deps.store,
            progress,
            metrics=self.agent.deps.metrics,
            swap_tag=self.op.id,  # a warm standby's shadows; the tag makes a resumed swap a no-op
        )
        return ", ".join(
            f"{r.database}: {'swapped in shadow' if r.shadow else 'restored'}, "
            f"{r.tables} tables, {r.rows} rows"
            for r in results
        )

    async def _restore_configs(self) -> str:
        catalog = await self._load_catalog()
        created = await restore_table_configs(
            self.agent.deps.pinot, self.agent.deps.store, catalog, self.request.latest_time
        )
        return f"created {len(created)} tables" if created else "every table already present"

    async def _rehydrate(self) -> str:
        assert self.op is not None
        catalog = await self._load_catalog()
        return await rehydrate_segments(
            self.agent, self.op, catalog, self.request.latest_time, self.request.batch_size
        )

    async def _resume_consumption(self) -> str:
        catalog = await self._load_catalog()
        tables = catalog.live_tables(as_of=self.request.latest_time)
        resumed = await resume_after_restore(self.agent.deps.pinot, tables)
        return f"consumption resumed on {len(resumed)} realtime tables"

    async def _take_over_zone(self) -> str:
        """This zone's lease, unless another agent of the zone holds it live. Not forced: an
        absent, paused, released or expired lease is taken, ours is renewed (one read of the
        lease and the log's tail together, then the write; a read to decide beforehand cost
        a round trip more)."""
        agent = self.agent
        try:
            await agent.keeper.take_over()
        except LeaseHeld as exc:
            raise StateError(
                f"{exc}: another agent of zone {agent.zone} is active; stop it before "
                "activating here"
            ) from exc
        if not agent.keeper.is_leader:
            raise StateError(f"could not take zone {agent.zone}'s lease")
        return f"zone {agent.zone} taken with epoch {agent.keeper.epoch}"


async def start_activation(
    agent: AgentContext, request: ActivateRequest
) -> tuple[int, dict[str, Any]]:
    """The ``/activate`` handler's work: validate, then dry-run or admit the operation.

    One admission at a time per agent, so two requests racing on this side cannot both pass
    the state check; the other side's racing activation is stopped by the primary record.
    """
    activation = Activation(agent, request)
    async with agent.admission:
        # Refuse illegal states before any I/O, so a busy agent answers 409 at once.
        with activation.noting_refusal():
            transition(agent.state, Request.ACTIVATE)
        try:
            await activation.prepare()
        except NotFound as exc:
            raise UnknownTarget(str(exc)) from exc
        if request.dry_run:
            return 200, await activation.dry_run()
        activation.source_pause = await pause_source(agent, request)
        if request.namespace is not None:
            await activation.check_source_stopped()
        op = await activation.begin()
        agent.start_operation(activation.run())
    return 202, {"operation": op.describe(agent.deps.clock.now())}
