"""``POST /resume``: lift this agent's silences; resume a paused zone that nobody took over.

After an activation, an operator checks the new cluster and calls ``/resume`` to unsilence its
alerts. On a ``PAUSED`` agent whose zone was not taken over (its log still ends with its own
``paused`` entry), ``/resume`` undoes the pause in place: the lease is taken back with the next
epoch, ingestion resumes from where it stopped, and the silences are lifted. A pause that scaled
the zone's workloads to 0 (``coldStandby.scaleDownOnPause``) has them scaled back up first, and
the answer waits until they are ready (``workloads`` in it says how that went): ingestion cannot
resume on a Pinot that does not run.

Taking the lease back is never forced: it is taken only when paused, released or expired; a
lease another agent holds live answers 409 naming the holder. The log and the group's primary
record are read again once the lease is ours, because another zone may have activated from this
one meanwhile (between the first look and the take): then the lease goes back ``paused``
without a write under it, the agent knows it was handed over (``STANDBY``), and the answer is
409.

On a ``FAILED`` agent whose last operation is a pause (it failed, or a restart cut it short:
see :mod:`az_agent.agent.daemon`), ``/resume`` undoes what the pause did: ingestion resumes if
the pause got as far as pausing it, silences are lifted, and the agent is ``ACTIVE`` again (it
kept leading meanwhile). The pause is marked ``resumedAt`` so a restart no longer counts it.
Ingestion is resumed before the state changes: if Pinot refuses, the answer is an error and the
agent stays ``FAILED``, so nothing is left paused behind an ``ACTIVE`` state.
"""

from __future__ import annotations

import logging
from typing import Any

from az_agent.agent.errors import WrongState
from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.pause import realtime_tables
from az_agent.agent.operations.silences import lift_silences
from az_agent.agent.operations.states import AgentState, Request, transition
from az_agent.drivers.errors import DriverError
from az_agent.drivers.pinot.base import ConsumeFrom
from az_agent.state import (
    FencePayload,
    LeaseHeld,
    LeaseState,
    PrimaryLock,
    StateError,
    last_entry,
)

log = logging.getLogger(__name__)


async def resume(agent: AgentContext) -> tuple[int, dict[str, Any]]:
    async with agent.admission:  # one admission at a time: not beside an /activate
        transition(agent.state, Request.RESUME)  # 409 unless ACTIVE, PAUSED or FAILED
        if agent.state is AgentState.ACTIVE:
            lifted = await lift_silences(agent)
            return 200, {"state": agent.state.value, "silencesLifted": lifted}
        if agent.state is AgentState.FAILED:
            return await _undo_failed_pause(agent)
        _refuse_if_taken(agent, await taken_over_by(agent))
        epoch = await _take_lease(agent)
        await _confirm_not_taken(agent)
        agent.set_state(Request.RESUME)
    workloads = await _scale_back_up(agent)
    resumed = await _resume_consumption(agent)
    lifted = await lift_silences(agent)
    log.info("zone %s resumed in place with epoch %d", agent.zone, epoch)
    return 200, {
        "state": agent.state.value,
        "epoch": epoch,
        "workloads": workloads,
        "tablesResumed": resumed,
        "silencesLifted": lifted,
    }


async def taken_over_by(agent: AgentContext) -> str | None:
    """Who took this zone over, if anyone: another zone is the group's primary, or the zone's
    log ends with a fence (after a clean pause it ends with the ``paused`` entry)."""
    newest = await last_entry(agent.deps.store, agent.zone)
    if newest is not None and isinstance(newest.payload, FencePayload):
        return newest.payload.by
    lock = PrimaryLock(agent.deps.store, agent.deps.config.service.group, clock=agent.deps.clock)
    primary = (await lock.read()).record
    if primary is not None and primary.zone != agent.zone:
        return f"zone {primary.zone} (primary of group {lock.group}, term {primary.term})"
    return None


def _refuse_if_taken(agent: AgentContext, by: str | None) -> None:
    if by is not None:
        raise WrongState(
            f"zone {agent.zone} was taken over ({by}); activate from the zone that took it to "
            "fail back",
            state=agent.state.value,
            takenOverBy=by,
        )


async def _take_lease(agent: AgentContext) -> int:
    """The zone's lease, if paused, released or expired; 409 naming a live holder."""
    try:
        return await agent.keeper.take_over()
    except LeaseHeld as exc:
        raise WrongState(
            f"zone {agent.zone}'s lease is live, held by {exc.holder} (epoch {exc.epoch}): "
            "another agent of this zone leads it; nothing to resume here",
            state=agent.state.value,
            holder=exc.holder,
        ) from exc


async def _confirm_not_taken(agent: AgentContext) -> None:
    """Read the log and the primary again with the lease held; give it back if taken over."""
    try:
        by = await taken_over_by(agent)
    except Exception:
        await _give_back(agent)
        raise
    if by is None:
        return
    await _give_back(agent)
    log.warning("zone %s was taken over by %s while /resume took its lease", agent.zone, by)
    agent.set_state(Request.FENCE)  # PAUSED -> STANDBY: handed over
    _refuse_if_taken(agent, by)


async def _give_back(agent: AgentContext) -> None:
    """Leave the lease ``paused`` again, nothing having been written under it."""
    try:
        await agent.keeper.release(LeaseState.PAUSED)
    except DriverError as exc:
        log.warning("zone %s: could not give the lease back (it expires): %s", agent.zone, exc)


async def _undo_failed_pause(agent: AgentContext) -> tuple[int, dict[str, Any]]:
    op = agent.operation
    if op is None or op.kind != "pause":
        raise WrongState(
            "nothing to resume: the operation that failed is not a pause (retry an activation "
            "with POST /activate)",
            state=agent.state.value,
        )
    paused_ingestion = op.get_phase("pause-consumption").status != "pending"
    resumed = await _resume_tables(agent) if paused_ingestion else []
    agent.set_state(Request.RESUME)
    lifted = await lift_silences(agent)
    op.result["resumedAt"] = agent.deps.clock.now().isoformat()
    await agent.journal.save(op)
    log.info("zone %s: failed pause %s undone, ingestion resumed", agent.zone, op.id)
    return 200, {
        "state": agent.state.value,
        "epoch": agent.keeper.epoch,
        "tablesResumed": resumed,
        "silencesLifted": lifted,
    }


async def _scale_back_up(agent: AgentContext) -> str | None:
    """The workloads a pause scaled to 0, up and ready again; None when it scaled none. A
    failure is logged and answered, not fatal: the zone leads again either way."""
    cold = agent.deps.cold_standby
    if cold is None or not agent.deps.config.service.cold_standby.scale_down_on_pause:
        return None

    async def progress(line: str) -> None:
        log.info("resume: %s", line)

    try:
        return await cold.scale_up(progress)
    except (DriverError, StateError, TimeoutError) as exc:
        log.warning("scaling the zone's workloads back up failed: %s", exc)
        return f"failed: {exc}"


async def _resume_consumption(agent: AgentContext) -> list[str]:
    """Resume ingestion of a zone that leads again; a failure is logged, not fatal."""
    try:
        return await _resume_tables(agent)
    except DriverError as exc:
        log.warning("resuming consumption failed (the backup loops still run): %s", exc)
        return []


async def _resume_tables(agent: AgentContext) -> list[str]:
    """Resume consumption of every realtime table in scope, from where it stopped."""
    resumed = []
    for table in await realtime_tables(agent):
        await agent.deps.pinot.resume_consumption(
            table.raw, consume_from=ConsumeFrom.LAST_CONSUMED, comment="az-agent resume"
        )
        resumed.append(table.raw)
    return resumed
