"""The agent: one zone's state machine, its leadership, and the operations it runs.

Patroni's lesson, kept here: HTTP requests only record intent and start an owned operation;
the loops decide. Every background task is owned by :meth:`Agent.run`'s task group (or by the
operation runner, which the same group owns) and is cancelled and awaited on shutdown.

A restart in the middle of an activation resumes it (its phases are idempotent). A restart in
the middle of a pause does not re-run it: its phases assumed the session and the backup loops
that died with the process, and the operator who asked may no longer want it. A pause whose
lease release had landed succeeded; any other is failed, and the agent starts ``FAILED``, as
after a pause that failed without a restart: it leads and backs up, and ``/pause`` retries the
pause or ``/resume`` undoes it (ingestion resumes, silences are lifted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from az_agent.agent.backoff import backoff_delay
from az_agent.agent.deps import AgentDeps
from az_agent.agent.errors import AgentError, NotReady, OperationFailed, WrongState
from az_agent.agent.leadership.automatic import AutomaticFailover, AutomaticFailoverDeps
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.leadership.zone import LeadershipDeps, ZoneLeadership
from az_agent.agent.observability.logs import bind_context, log_context
from az_agent.agent.observability.metrics import CONTENT_TYPE
from az_agent.agent.operations.journal import Operation, OperationJournal
from az_agent.agent.operations.requests import ActivateRequest, PauseRequest
from az_agent.agent.operations.silences import SilenceRetry
from az_agent.agent.operations.states import (
    AgentState,
    IllegalTransition,
    Request,
    allowed_requests,
    transition,
)
from az_agent.agent.recovery import starting_state
from az_agent.agent.standby.health import (
    HealthWatchDeps,
    ZoneHealthView,
    ZoneHealthWatch,
    peer_zone_of,
    probe_zone,
)
from az_agent.agent.standby.warm import WarmFollower
from az_agent.agent.supervisor import Supervisor, to_the_end
from az_agent.drivers.errors import DriverError
from az_agent.state import (
    Catalog,
    HealthBoard,
    HealthCheck,
    LeaseKeeper,
    LeaseSettings,
    LeaseState,
    LogCorrupted,
    StateError,
    ZoneHealth,
    new_holder_id,
)

log = logging.getLogger(__name__)

PAUSE_WAIT_SECONDS = 300
RECOVERING = "RECOVERING"
"""What ``/status`` and ``/healthz`` show as the state until recovery has decided it."""
RECOVERY_RETRY_MAX_SECONDS = 30.0
UNLED_STATES = frozenset({AgentState.STANDBY})
"""A standby zone is led by no replica: they publish its health by CAS. (A paused or fenced
agent writes nothing at all: the zone is in another's hands until an operator acts.)"""

__all__ = ["Agent", "AgentDeps"]


class Agent:
    """One zone's agent. Create, then ``await run()``; the HTTP API calls the other methods."""

    def __init__(self, deps: AgentDeps) -> None:
        self.deps = deps
        self.zone = deps.config.zone
        self.holder = new_holder_id(f"{self.zone}-agent")
        self.supervisor = Supervisor(deps.metrics, deps.clock, self._on_fatal)
        self.failure: str | None = None
        """Why the agent is FAILED outside any operation (a split brain, a corrupt log)."""
        self.dependencies: dict[str, str] = {}
        """Each dependency's last probe: ``"ok"`` or its error (``status.check_dependencies``)."""
        lease = deps.config.service.lease
        self.lease_settings = LeaseSettings(
            ttl_seconds=lease.ttl_seconds,
            renew_deadline_seconds=lease.renew_deadline_seconds,
            retry_period_seconds=lease.retry_period_seconds,
        )
        self.leadership = ZoneLeadership(
            LeadershipDeps(
                zone=self.zone,
                group=deps.config.service.group,
                holder=self.holder,
                store=deps.store,
                clock=deps.clock,
                metrics=deps.metrics,
                settings=self.lease_settings,
                segment_backup=deps.segment_backup,
                database_backup=deps.database_backup,
                supervisor=self.supervisor,
                retention=deps.retention,
                cold_standby=deps.cold_standby,
            ),
            wants=self._wants_leadership,
            on_fenced=self._on_fenced,
            on_taken_over=self._on_taken_over,
        )
        self.journal = OperationJournal(deps.store, self.zone, deps.clock)
        self.health_watch = self._health_watch()
        self.health: ZoneHealthView = self.health_watch.view
        """This zone as this agent measured it, and the peer zone's published health."""
        self.state = AgentState.STANDBY
        self.operation: Operation | None = None
        deps.metrics.operation.track(self._running_operation)
        self.admission = asyncio.Lock()
        self.silence_retry = SilenceRetry()
        self.fenced_by: str | None = None
        self._op_task: asyncio.Task[None] | None = None
        self._op_runner: asyncio.TaskGroup | None = None
        self._last_beat = time.monotonic()
        self._started = False
        """Set once recovery has decided the starting state."""
        self._accepting = False
        """True from the end of recovery until shutdown; POSTs are refused (503) outside it, so
        no operation starts on a state that recovery would then overwrite, or without a task."""
        self._recovery_error: str | None = None
        self.follower: WarmFollower | None = None
        """A warm standby's follow loop (``standby.mode: warm``); its lag is in ``/status``."""
        if deps.config.service.standby.mode == "warm":
            self.follower = WarmFollower(
                deps,
                zone=self.zone,
                primary_zone=lambda: (
                    self.leadership.primary.zone if self.leadership.primary else None
                ),
                is_standby=lambda: self.state is AgentState.STANDBY and self.failure is None,
            )
            deps.metrics.standby_lag.track(self.follower.lag)
        self.automatic: AutomaticFailover | None = None
        """The automatic failover's decision loop, when enabled (its last decision in
        ``/status``)."""

    @property
    def keeper(self) -> LeaseKeeper:
        return self.leadership.keeper

    @property
    def session(self) -> LeaderSession | None:
        return self.leadership.session

    # ----------------------------------------------------------------- state

    def set_state(self, request: Request) -> AgentState:
        """Apply ``request`` to the state machine (``IllegalTransition`` when not allowed)."""
        new = transition(self.state, request)
        if new is not self.state:
            log.info("state %s -> %s (%s)", self.state.value, new.value, request.value)
        self.state = new
        if new is not AgentState.FAILED:
            self.failure = None  # an operator request or a fence moved it on
        if self._wants_leadership():
            # Leading again, a (retried) pause that needs the session, or a pause that failed
            # after it had stopped the session: the zone stays backed up until it is retried.
            self.leadership.unsuspend()
        self.deps.metrics.set_state(new)
        self.leadership.state_changed()
        return new

    def _running_operation(self) -> tuple[str, float] | None:
        """The running operation's kind and start, for the metrics; None when none runs."""
        op = self.operation
        if op is None or op.status != "running":
            return None
        return op.kind, op.started_at.timestamp()

    def _wants_leadership(self) -> bool:
        if self.failure is not None:
            return False
        if self.state is AgentState.FAILED:
            # A failed pause keeps the zone backed up until it is retried; a failed activation
            # must not take this zone's lease.
            return self.operation is not None and self.operation.kind == "pause"
        return self.state in (AgentState.ACTIVE, AgentState.PAUSING)

    def wants_leadership(self) -> bool:
        return self.leadership.wants_leadership()

    # ------------------------------------------------------------- lifecycle

    async def recover(self) -> None:
        """Decide the starting state from the bucket: the lease, the log, a running operation."""
        start = await starting_state(
            self.keeper, self.journal, self.deps.store, self.deps.config.service.role
        )
        self.state, self.operation = start.state, start.operation
        self.deps.metrics.set_state(self.state)
        log.info(
            "zone %s starts %s (lease %s, holder id %s)",
            self.zone,
            self.state.value,
            start.lease,
            self.holder,
        )

    async def run(self, *, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run until cancelled: lease loop, leader sessions, operations. Cleans up on exit."""
        bind_context(zone=self.zone, holder=self.holder)  # on every record of its tasks
        await self._recover()
        self._started = True
        from az_agent.agent.status import watch_dependencies

        supervisor = self.supervisor
        try:
            async with asyncio.TaskGroup() as group:
                self._op_runner = group
                supervisor.start(group, "silence-retry", lambda: self.silence_retry.run(self))
                supervisor.start(group, "leadership", self.leadership.run)
                supervisor.start(group, "heartbeat", self._heartbeat)
                supervisor.start(group, "dependencies", lambda: watch_dependencies(self))
                supervisor.start(group, "zone-health", self.health_watch.run)
                if self.follower is not None:
                    supervisor.start(group, "warm-standby", self.follower.run)
                if self.deps.config.service.automatic_failover.enabled:
                    supervisor.start(group, "automatic-failover", self._automatic_failover)
                if self.state is AgentState.ACTIVATING and self.operation is not None:
                    self.start_operation(self._resume_activation(self.operation))
                self._accepting = True
                if on_ready is not None:
                    await on_ready()
        finally:
            self._accepting = False
            self._op_runner = None
            await to_the_end(self._shutdown())

    async def _recover(self) -> None:
        """:meth:`recover`, retried with backoff while the bucket cannot be read: the agent
        never exits because a dependency is down, and meanwhile its HTTP API says it is
        recovering (``/readyz`` 503, POSTs 503 with ``Retry-After``)."""
        attempt = 0
        while True:
            try:
                await self.recover()
            except LogCorrupted as exc:  # no retry reads it: FAILED with the reason
                self._recovery_error = None
                self._on_fatal("recovery", exc)
                return
            except DriverError as exc:
                attempt += 1
                self._recovery_error = f"{type(exc).__name__}: {exc}"
                delay = backoff_delay(attempt, 1.0, RECOVERY_RETRY_MAX_SECONDS)
                log.warning("recovery failed, retrying in %.1fs: %s", delay, exc)
                await self.deps.clock.sleep(delay)
            else:
                self._recovery_error = None
                return

    def _check_accepting(self) -> None:
        """Refuse a POST (503, ``Retry-After``) before recovery has ended or once shutdown
        has begun: nothing is validated or written then."""
        if self._accepting:
            return
        if self._started:
            raise NotReady("the agent is shutting down")
        detail = "recovering: reading this zone's lease, log and operations from the bucket"
        if self._recovery_error is not None:
            detail += f" (last attempt failed: {self._recovery_error})"
        raise NotReady(detail)

    async def _shutdown(self) -> None:
        """Checkpoint and release the lease only when not mid-operation, so a restart can
        resume cleanly."""
        if self.keeper.is_leader and self.state is AgentState.ACTIVE:
            await self.leadership.checkpoint_on_exit()
            with contextlib.suppress(DriverError, StateError):
                await self.keeper.release(LeaseState.RELEASED)
                log.info("lease released on shutdown")

    def start_operation(self, work: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``work`` as the one operation task, owned by :meth:`run`'s task group."""
        if self._op_runner is None:
            raise NotReady("the agent is not running")
        if self._op_task is not None and not self._op_task.done():
            raise WrongState("another operation is running", state=self.state.value)

        async def guarded() -> None:
            try:
                if self.follower is not None:
                    # No follow step may touch Pinot or the shadow databases once an operation
                    # runs (the state has left STANDBY, so none starts again).
                    await self.follower.stop()
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("operation failed")

        self._op_task = self._op_runner.create_task(guarded(), name="operation")
        return self._op_task

    async def _resume_activation(self, operation: Operation) -> None:
        from az_agent.agent.operations.activate import Activation

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

    async def stop_backups(self) -> None:
        """Stop the session's backup loops, keeping its writer for the pause's handover."""
        await self.leadership.stop_backups()

    async def stop_session(self) -> None:
        """End the current leader session (pause) and wait until its loops have stopped; no
        new session starts until the agent is ACTIVE again."""
        await self.leadership.stop_session()

    def source_keeper(self, zone: str) -> LeaseKeeper:
        return self.leadership.source_keeper(zone)

    def forget_source(self, zone: str) -> None:
        self.leadership.forget_source(zone)

    def followed_catalog(self, zone: str) -> Catalog | None:
        return self.follower.catalog_of(zone) if self.follower is not None else None

    def _on_fenced(self, reason: str) -> None:
        log.error("%s: this agent stops writing and does not fight back", reason)
        self.fenced_by = reason
        self.keeper.abdicate()  # /status and the metrics stop saying "leader" at once
        if self.state is not AgentState.FENCED:
            self.set_state(Request.FENCE)

    def _on_fatal(self, loop: str, exc: LogCorrupted) -> None:
        """A split brain or a corrupt log: stop writing and wait in ``FAILED`` with the reason
        (``/status``), serving the API, for an operator; no retry or restart can fix it."""
        self.failure = f"{loop}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        log.error("zone %s FAILED: %s; this agent stops writing", self.zone, self.failure)
        if self.state is not AgentState.FAILED:
            log.info("state %s -> FAILED (%s)", self.state.value, loop)
            self.state = AgentState.FAILED  # from any state: outside the operator's table
        self.deps.metrics.errors.labels(kind="fatal").inc()
        self.deps.metrics.set_state(self.state)
        self.leadership.end_session()
        self.leadership.state_changed()

    def _on_taken_over(self, by: str) -> None:
        if self.state not in (AgentState.ACTIVE, AgentState.PAUSED):
            return
        self.fenced_by = by
        log.warning("zone %s was taken over by %s", self.zone, by)
        self.set_state(Request.FENCE)

    async def _automatic_failover(self) -> None:
        service = self.deps.config.service
        settings = service.automatic_failover
        self.automatic = AutomaticFailover(
            AutomaticFailoverDeps(
                zone=self.zone,
                settings=settings,
                keeper=self.source_keeper(settings.source_zone),
                health=HealthBoard(self.deps.store, self.zone, clock=self.deps.clock),
                clock=self.deps.clock,
                metrics=self.deps.metrics,
                period=self.lease_settings.retry_period_seconds,
                cold=service.standby.mode == "cold" and service.cold_standby.enabled,
                is_standby=lambda: self.state is AgentState.STANDBY,
                primary=lambda: self.leadership.primary.record if self.leadership.primary else None,
                own_health=self._own_health,
                last_automatic=self._last_automatic_activation,
                activate=self._activate_automatically,
            )
        )
        await self.automatic.run()

    def _own_health(self) -> ZoneHealth | None:
        return self.health.own

    def _health_watch(self) -> ZoneHealthWatch:
        deps = self.deps
        dumper = deps.dumper

        def peer_zone() -> str | None:
            primary = self.leadership.primary
            source = deps.config.service.automatic_failover.source_zone
            return peer_zone_of(self.zone, primary.record if primary else None, source)

        def on_probed(checks: Mapping[str, HealthCheck]) -> None:
            from az_agent.agent.status import note_zone_probe

            note_zone_probe(self, checks)

        return ZoneHealthWatch(
            HealthWatchDeps(
                probe=lambda: probe_zone(
                    deps.pinot,
                    dumper.ping if dumper is not None else None,
                    tables=deps.config.service.pinot.tables,
                ),
                board=HealthBoard(deps.store, self.zone, clock=deps.clock),
                holder=self.holder,
                is_leader=lambda: self.keeper.is_leader,
                unled=lambda: self.state in UNLED_STATES,
                peer_zone=peer_zone,
                clock=deps.clock,
                metrics=deps.metrics,
                period=self.lease_settings.retry_period_seconds,
                on_probed=on_probed,
            )
        )

    async def _last_automatic_activation(self) -> datetime | None:
        """When this zone last activated automatically, from its journal (survives restarts)."""
        try:
            op = await self.journal.load_current()
        except (DriverError, StateError) as exc:
            log.warning("automatic failover: cannot read the journal for the cooldown: %s", exc)
            return None
        if op is None or op.kind != "activate" or not op.request.get("automatic"):
            return None
        return op.started_at

    async def _activate_automatically(self, source: str, reason: str, force: bool) -> bool:
        from az_agent.agent.operations.activate import start_activation

        request = ActivateRequest(zone=source, force=force, automatic=reason)
        try:
            with self._named():
                await start_activation(self, request)
        except (AgentError, DriverError, StateError, IllegalTransition) as exc:
            log.error("automatic failover from zone %s could not start: %s", source, exc)
            return False
        return True

    # ------------------------------------------------------------- read side

    def status(self) -> dict[str, Any]:
        from az_agent.agent.status import build_status

        body = build_status(self)
        if not self._started:  # the state is not known yet: say so, not the default STANDBY
            body.update(state=RECOVERING, allowedRequests=[], recoveryError=self._recovery_error)
        return body

    def healthz(self) -> tuple[bool, dict[str, Any]]:
        """Alive while recovering too (the answer itself shows the loop turns): a slow or
        retried recovery must not get the process restarted by its liveness probe."""
        if not self._started:
            return True, {"ok": True, "state": RECOVERING, "recovering": True}
        age = time.monotonic() - self._last_beat
        ok = age < 10
        return ok, {"ok": ok, "state": self.state.value, "loopLagSeconds": round(age, 3)}

    async def readyz(self) -> tuple[bool, dict[str, Any]]:
        from az_agent.agent.status import check_dependencies

        ok, body = await check_dependencies(self)
        if self._started:
            return ok, body
        body["dependencies"]["recovery"] = self._recovery_error or "recovering"
        down = sorted([*body["down"], "recovery"])
        return False, {**body, "ok": False, "down": down, "recovering": True}

    def metrics_text(self) -> tuple[bytes, str]:
        self._refresh_metrics()
        return self.deps.metrics.render(), CONTENT_TYPE

    def allowed(self) -> list[str]:
        """The operator requests the current state accepts."""
        operator = (Request.PAUSE, Request.ACTIVATE, Request.RESUME)
        return [r.value for r in allowed_requests(self.state) if r in operator]

    # ------------------------------------------------------------ write side

    async def pause(self, request: PauseRequest) -> tuple[int, dict[str, Any]]:
        from az_agent.agent.operations.pause import Pause, already_paused

        self._check_accepting()
        if (held := already_paused(self)) is not None:
            return held
        with self._named():
            pause = Pause(self, request)
            op = await pause.begin()
            task = self.start_operation(pause.run())
        await asyncio.wait({task}, timeout=request.wait_seconds or PAUSE_WAIT_SECONDS)
        return self._operation_answer(op, done=task.done())

    async def activate(self, request: ActivateRequest) -> tuple[int, dict[str, Any]]:
        from az_agent.agent.operations.activate import start_activation

        self._check_accepting()
        with self._named():
            return await start_activation(self, request)

    async def resume(self) -> tuple[int, dict[str, Any]]:
        from az_agent.agent.operations.resume import resume

        self._check_accepting()
        with self._named():
            return await resume(self)

    def _named(self) -> AbstractContextManager[None]:
        """Zone and holder on the records of a request's work in the caller's task (the HTTP
        server's are named already; an embedding caller's, a test's, are not)."""
        return log_context(zone=self.zone, holder=self.holder)

    def _operation_answer(self, op: Operation, *, done: bool) -> tuple[int, dict[str, Any]]:
        body = {"state": self.state.value, "operation": op.describe(self.deps.clock.now())}
        if not done or op.status == "running":
            return 202, body
        if op.status == "failed":
            raise OperationFailed(op.error or "operation failed", **body)
        return 200, body
