"""The agent: one zone's state machine, its lease, and the backups it runs while it leads.

Patroni's lesson, kept here: HTTP requests only record intent and start an owned operation;
the loops decide. Every background task is owned by :meth:`Agent.run`'s task group (or by the
operation runner, which the same group owns) and is cancelled and awaited on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from az_agent.agent.config import AgentConfig
from az_agent.agent.http.errors import ApiError, Conflict, DependencyDown, OperationFailed
from az_agent.agent.loops import DatabaseBackup, SegmentBackup
from az_agent.agent.metrics import CONTENT_TYPE, AgentMetrics
from az_agent.agent.operations import Operation, OperationJournal
from az_agent.agent.requests import ActivateRequest, PauseRequest
from az_agent.agent.session import LeaderSession
from az_agent.agent.states import (
    AgentState,
    IllegalTransition,
    Request,
    allowed_requests,
    transition,
)
from az_agent.drivers.alerts.base import SilenceManager
from az_agent.drivers.errors import DriverError
from az_agent.drivers.kubernetes.service_proxy import KubernetesServiceProxy
from az_agent.drivers.pinot.base import PinotController
from az_agent.drivers.postgres.base import PostgresDumper
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import (
    Clock,
    Fenced,
    FencePayload,
    LeaseKeeper,
    LeaseObservation,
    LeaseSettings,
    LeaseState,
    LogWriter,
    NotLeader,
    PausedPayload,
    StateError,
    last_entry,
    load_catalog,
    new_holder_id,
    write_checkpoint,
)

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_ENTRIES = 10_000
PAUSE_WAIT_SECONDS = 300


@dataclass
class AgentDeps:
    """Everything the agent talks to, built by the runner (or a test) from the config."""

    config: AgentConfig
    store: ObjectStore
    clock: Clock
    pinot: PinotController
    dumper: PostgresDumper | None
    silences: SilenceManager
    segment_backup: SegmentBackup
    database_backup: DatabaseBackup | None
    metrics: AgentMetrics
    service_proxy: KubernetesServiceProxy | None = None


class _LeadershipEnded(Exception):
    """Raised inside the leader session's task group to stop its loops."""


class Agent:
    """One zone's agent. Create, then ``await run()``; the HTTP API calls the other methods."""

    def __init__(self, deps: AgentDeps) -> None:
        self.deps = deps
        self.zone = deps.config.zone
        self.holder = new_holder_id(f"{self.zone}-agent")
        lease = deps.config.service.lease
        self.lease_settings = LeaseSettings(
            ttl_seconds=lease.ttl_seconds,
            renew_deadline_seconds=lease.renew_deadline_seconds,
            retry_period_seconds=lease.retry_period_seconds,
        )
        self.keeper = LeaseKeeper(
            deps.store, self.zone, self.holder, self.lease_settings, clock=deps.clock
        )
        self.journal = OperationJournal(deps.store, self.zone, deps.clock)
        self.state = AgentState.STANDBY
        self.session: LeaderSession | None = None
        self.operation: Operation | None = None
        self.fenced_by: str | None = None
        self._op_task: asyncio.Task[None] | None = None
        self._op_runner: asyncio.TaskGroup | None = None
        self._session_stop = asyncio.Event()
        self._session_ended = asyncio.Event()
        self._session_ended.set()
        self._session_suspended = False
        self._state_changed = asyncio.Event()
        self._last_beat = time.monotonic()
        self._started = False
        self._observers: dict[str, LeaseKeeper] = {}
        self._judged_version: str | None = None

    # ----------------------------------------------------------------- state

    def set_state(self, request: Request) -> AgentState:
        """Apply ``request`` to the state machine (``IllegalTransition`` when not allowed)."""
        new = transition(self.state, request)
        if new is not self.state:
            log.info("state %s -> %s (%s)", self.state.value, new.value, request.value)
        self.state = new
        if new in (AgentState.ACTIVE, AgentState.PAUSING):
            self._session_suspended = False  # leading again, or a (retried) pause that needs it
        self.deps.metrics.set_state(new)
        self._state_changed.set()
        return new

    def wants_leadership(self) -> bool:
        if self._session_suspended:  # a pause is handing the lease over
            return False
        if self.state is AgentState.FAILED:
            # A failed pause keeps the zone backed up until it is retried; a failed activation
            # must not take this zone's lease.
            return self.operation is not None and self.operation.kind == "pause"
        return self.state in (AgentState.ACTIVE, AgentState.PAUSING)

    # ------------------------------------------------------------- lifecycle

    async def recover(self) -> None:
        """Decide the starting state from the bucket: the lease, the log, a running operation."""
        observation = await self.keeper.observe()
        record = observation.record
        current = await self.journal.load_current()
        if record is None:
            role = self.deps.config.service.role
            self.state = AgentState.ACTIVE if role == "active" else AgentState.STANDBY
        elif record.state is LeaseState.PAUSED:
            newest = await last_entry(self.deps.store, self.zone)
            handed_over = newest is not None and isinstance(newest.payload, FencePayload)
            self.state = AgentState.STANDBY if handed_over else AgentState.PAUSED
        else:
            self.state = AgentState.ACTIVE  # active or released: the election decides
        if current is not None and current.status == "running":
            self.operation = current
            if current.kind == "activate":
                self.state = AgentState.ACTIVATING
            else:
                self.operation.status = "failed"
                self.operation.error = "interrupted by an agent restart; POST /pause again"
                await self.journal.save(self.operation)
        elif current is not None:
            self.operation = current
        self.deps.metrics.set_state(self.state)
        log.info(
            "zone %s starts %s (lease %s, holder id %s)",
            self.zone,
            self.state.value,
            record.state.value if record else "absent",
            self.holder,
        )

    async def run(self, *, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run until cancelled: lease loop, leader sessions, operations. Cleans up on exit."""
        await self.recover()
        self._started = True
        try:
            async with asyncio.TaskGroup() as group:
                self._op_runner = group
                group.create_task(self._lease_loop(), name="lease")
                group.create_task(self._leadership_loop(), name="leadership")
                group.create_task(self._heartbeat(), name="heartbeat")
                if self.deps.config.service.automatic_failover.enabled:
                    group.create_task(self._automatic_failover(), name="automatic-failover")
                if self.state is AgentState.ACTIVATING and self.operation is not None:
                    self.start_operation(self._resume_activation(self.operation))
                if on_ready is not None:
                    await on_ready()
        finally:
            self._op_runner = None
            await asyncio.shield(self._shutdown())

    async def _shutdown(self) -> None:
        """Release the lease only when not mid-operation, so a restart can resume cleanly."""
        if self.keeper.is_leader and self.state is AgentState.ACTIVE:
            with contextlib.suppress(DriverError, StateError):
                await self.keeper.release(LeaseState.RELEASED)
                log.info("lease released on shutdown")

    def start_operation(self, work: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``work`` as the one operation task, owned by :meth:`run`'s task group."""
        if self._op_runner is None:
            raise DependencyDown("the agent is not running")
        if self._op_task is not None and not self._op_task.done():
            raise Conflict("another operation is running", state=self.state.value)

        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("operation failed")

        self._op_task = self._op_runner.create_task(guarded(), name="operation")
        return self._op_task

    async def _resume_activation(self, operation: Operation) -> None:
        from az_agent.agent.activate import Activation

        await Activation.resume(self, operation).run()

    # ---------------------------------------------------------------- loops

    async def _heartbeat(self) -> None:
        while True:
            self._last_beat = time.monotonic()
            self._refresh_metrics()
            await self.deps.clock.sleep(1.0)

    def _refresh_metrics(self) -> None:
        metrics = self.deps.metrics
        status = self.keeper.status()
        metrics.leader.set(1 if status.is_leader else 0)
        metrics.epoch.set(status.epoch or 0)
        metrics.fenced.set(1 if self.state is AgentState.FENCED else 0)
        metrics.rpo_seconds.labels(kind="segments").set(self.deps.segment_backup.rpo_seconds())
        if self.deps.database_backup is not None:
            metrics.rpo_seconds.labels(kind="postgres").set(self.deps.database_backup.rpo_seconds())

    async def _lease_loop(self) -> None:
        """Renew or acquire while the state wants leadership; otherwise only watch the lease."""
        period = self.lease_settings.retry_period_seconds
        while True:
            try:
                if self.wants_leadership():
                    await self.keeper.tick()
                if not self.keeper.is_leader:
                    await self._check_taken_over(await self.keeper.observe())
                for observer in list(self._observers.values()):
                    await observer.observe()
            except (DriverError, StateError) as exc:
                self.deps.metrics.errors.labels(kind="lease").inc()
                log.warning("lease round failed: %s", exc)
            await self.deps.clock.sleep(period)

    async def _check_taken_over(self, observation: LeaseObservation) -> None:
        """Another zone's agent activated from this zone: our lease is paused under its name and
        our log ends with its fence. (A paused lease held by an earlier incarnation of this agent
        is not a takeover: then the log ends with that incarnation's ``paused`` entry.)"""
        record = observation.record
        if record is None or record.state is not LeaseState.PAUSED or record.holder == self.holder:
            return
        if self.state not in (AgentState.ACTIVE, AgentState.PAUSED):
            return
        if observation.version == self._judged_version:
            return
        self._judged_version = observation.version
        newest = await last_entry(self.deps.store, self.zone)
        if newest is None or not isinstance(newest.payload, FencePayload):
            return
        self.fenced_by = newest.payload.by
        log.warning("zone %s was taken over by %s", self.zone, newest.payload.by)
        self.set_state(Request.FENCE)

    async def _automatic_failover(self) -> None:
        """While STANDBY, watch the source zone's lease; once it has not changed for its TTL
        plus the grace period (judged on this agent's clock), activate from it. A paused
        source (a planned handshake in progress) is left to the operator."""
        settings = self.deps.config.service.automatic_failover
        keeper = self.source_keeper(settings.source_zone)
        while True:
            await self.deps.clock.sleep(self.lease_settings.retry_period_seconds)
            if self.state is not AgentState.STANDBY:
                continue
            try:
                observation = await keeper.observe()
            except (DriverError, StateError) as exc:
                log.warning("automatic failover: cannot read zone %s's lease: %s", keeper.zone, exc)
                continue
            record = observation.record
            if record is None or record.state is LeaseState.PAUSED:
                continue
            silent = observation.seconds_unchanged
            if silent < record.ttl_seconds + settings.grace_seconds:
                continue
            log.warning(
                "zone %s's lease (holder %s) has not changed for %.0fs: automatic failover",
                keeper.zone,
                record.holder,
                silent,
            )
            await self._activate_automatically(settings.source_zone)

    async def _activate_automatically(self, source: str) -> None:
        from az_agent.agent.activate import start_activation

        try:
            await start_activation(self, ActivateRequest(zone=source))
        except (ApiError, DriverError, StateError, IllegalTransition) as exc:
            log.error("automatic failover from zone %s could not start: %s", source, exc)

    async def _leadership_loop(self) -> None:
        while True:
            if not self.wants_leadership():
                self._state_changed.clear()
                await self._state_changed.wait()
                continue
            await self.keeper.wait_leader()
            if not self.wants_leadership():
                continue
            if not self.keeper.is_leader:  # a stale signal: wait for the next lease round
                await self.deps.clock.sleep(self.lease_settings.retry_period_seconds)
                continue
            await self._lead()

    async def _lead(self) -> None:
        """One leader session: fence the log with our epoch, then run the backup loops."""
        epoch = self.keeper.epoch
        assert epoch is not None
        keeper = self.keeper
        writer = LogWriter(
            self.deps.store,
            self.zone,
            epoch,
            self.holder,
            clock=self.deps.clock,
            guard=lambda: keeper.is_leader and keeper.epoch == epoch,
        )
        try:
            await writer.write_fence(reason=f"{self.holder} leads zone {self.zone}")
            catalog = await load_catalog(self.deps.store, self.zone)
        except Fenced as exc:
            self._on_fenced(str(exc))
            return
        except (NotLeader, DriverError, StateError) as exc:
            log.warning("could not start leading: %s", exc)
            await self.deps.clock.sleep(self.lease_settings.retry_period_seconds)
            return
        session = LeaderSession(
            self.zone, epoch, self.deps.store, writer, catalog, self.deps.metrics, self.deps.clock
        )
        self.session = session
        self._session_stop.clear()
        self._session_ended.clear()
        log.info("leading zone %s with epoch %d from entry %d", self.zone, epoch, catalog.last_seq)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.deps.segment_backup.run(session), name="segments")
                if self.deps.database_backup is not None:
                    group.create_task(self.deps.database_backup.run(session), name="postgres")
                group.create_task(self._maintain(session), name="maintenance")
                group.create_task(self._watch_session(session), name="session-watch")
        except* _LeadershipEnded:
            pass
        finally:
            self.session = None
            self._session_ended.set()
        if writer.is_fenced:
            self._on_fenced(f"zone {self.zone} was fenced by a newer epoch")

    async def _watch_session(self, session: LeaderSession) -> None:
        period = min(1.0, self.lease_settings.retry_period_seconds)
        while self.keeper.is_leader and session.is_usable and not self._session_stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._session_stop.wait(), period)
        raise _LeadershipEnded

    async def stop_session(self) -> None:
        """End the current leader session (pause) and wait until its loops have stopped; no
        new session starts until the agent is ACTIVE again."""
        self._session_suspended = True
        self._session_stop.set()
        await self._session_ended.wait()

    async def _maintain(self, session: LeaderSession) -> None:
        """Checkpoint the catalog every so many entries, so loading stays cheap."""
        last = session.catalog.last_seq
        while True:
            await self.deps.clock.sleep(30.0)
            if session.catalog.last_seq - last >= CHECKPOINT_EVERY_ENTRIES:
                try:
                    await write_checkpoint(self.deps.store, session.catalog)
                    last = session.catalog.last_seq
                except DriverError as exc:
                    log.warning("checkpoint failed: %s", exc)

    def _on_fenced(self, reason: str) -> None:
        log.error("%s: this agent stops writing and does not fight back", reason)
        self.fenced_by = reason
        if self.state is not AgentState.FENCED:
            self.set_state(Request.FENCE)

    # ------------------------------------------------------------- read side

    def status(self) -> dict[str, Any]:
        from az_agent.agent.status import build_status

        return build_status(self)

    def healthz(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self._last_beat
        ok = self._started and age < 10
        return ok, {"ok": ok, "state": self.state.value, "loopLagSeconds": round(age, 3)}

    async def readyz(self) -> tuple[bool, dict[str, Any]]:
        from az_agent.agent.status import check_dependencies

        return await check_dependencies(self)

    def metrics_text(self) -> tuple[bytes, str]:
        self._refresh_metrics()
        return self.deps.metrics.render(), CONTENT_TYPE

    def allowed(self) -> list[str]:
        """The operator requests the current state accepts."""
        operator = (Request.PAUSE, Request.ACTIVATE, Request.RESUME)
        return [r.value for r in allowed_requests(self.state) if r in operator]

    async def silence_alerts(self, op: Operation, reason: str) -> str:
        """Silence this zone's alerts for ``op``; the id is persisted before anything else."""
        silences = self.deps.silences
        if not silences.enabled:
            return "no Alertmanager configured"
        hours = self.deps.config.service.alertmanager.silence_hours
        silence_id = await silences.silence(
            comment=f"az-agent zone {self.zone}: {op.id} ({reason}); lifted by POST /resume",
            duration=timedelta(hours=hours),
        )
        if not silence_id:
            return "silencing disabled"
        remembered = await self.journal.load_silences()
        await self.journal.save_silences([*remembered, silence_id])
        op.silences.append(silence_id)
        await self.journal.save(op)
        return f"silence {silence_id} until it is lifted or {hours:g}h pass"

    async def lift_silences(self) -> list[str]:
        """Expire every silence this zone's agent created and has not lifted; idempotent."""
        remembered = await self.journal.load_silences()
        for silence_id in remembered:
            await self.deps.silences.expire(silence_id)
        if remembered:
            await self.journal.save_silences([])
        return remembered

    def forget_source(self, zone: str) -> None:
        """Stop observing ``zone`` (it turned out not to exist)."""
        self._observers.pop(zone, None)

    def source_keeper(self, zone: str) -> LeaseKeeper:
        """A keeper for another zone's lease, kept (and observed every lease round) so that
        its expiry is judged over time, as Kubernetes leader election does."""
        keeper = self._observers.get(zone)
        if keeper is None:
            keeper = LeaseKeeper(
                self.deps.store, zone, self.holder, self.lease_settings, clock=self.deps.clock
            )
            self._observers[zone] = keeper
        return keeper

    # ------------------------------------------------------------ write side

    async def pause(self, request: PauseRequest) -> tuple[int, dict[str, Any]]:
        from az_agent.agent.pause import Pause

        pause = Pause(self, request)
        op = await pause.begin()
        task = self.start_operation(pause.run())
        await asyncio.wait({task}, timeout=request.wait_seconds or PAUSE_WAIT_SECONDS)
        return self._operation_answer(op, done=task.done())

    async def activate(self, request: ActivateRequest) -> tuple[int, dict[str, Any]]:
        from az_agent.agent.activate import start_activation

        return await start_activation(self, request)

    async def resume(self) -> tuple[int, dict[str, Any]]:
        from az_agent.agent.resume import resume

        return await resume(self)

    def _operation_answer(self, op: Operation, *, done: bool) -> tuple[int, dict[str, Any]]:
        body = {"state": self.state.value, "operation": op.describe(self.deps.clock.now())}
        if not done or op.status == "running":
            return 202, body
        if op.status == "failed":
            raise OperationFailed(op.error or "operation failed", **body)
        return 200, body

    async def write_paused(self, handover: dict[str, Any]) -> None:
        session = self.session
        if session is None:
            raise NotLeader(f"zone {self.zone}: not leading, cannot write the paused entry")
        await session.commit(PausedPayload.model_validate(handover))
