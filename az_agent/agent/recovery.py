"""Where a (re)started agent stands: decided from the bucket alone, never from memory.

The zone's lease says whether this zone was active, paused or handed over; the log's last entry
tells a pause of our own from a takeover; the journal's current operation is resumed
(activation) or closed (pause). A pause that a restart cut short is not re-run: if its lease
release had landed it is done (``PAUSED``); otherwise it failed and the agent starts ``FAILED``,
still leading and backing up, until ``/pause`` retries it or ``/resume`` undoes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from az_agent.agent.operations.journal import Operation, OperationJournal
from az_agent.agent.operations.states import AgentState
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import FencePayload, LeaseKeeper, LeaseState, last_entry


@dataclass(frozen=True)
class Start:
    """The starting state, the operation to show (or resume), and the lease as read."""

    state: AgentState
    operation: Operation | None
    lease: str


async def starting_state(
    keeper: LeaseKeeper, journal: OperationJournal, store: ObjectStore, role: str
) -> Start:
    """Read the zone's lease, log tail and current operation; close an interrupted pause."""
    observation = await keeper.observe()
    record = observation.record
    current = await journal.load_current()
    if record is None:
        state = AgentState.ACTIVE if role == "active" else AgentState.STANDBY
    elif record.state is LeaseState.PAUSED:
        newest = await last_entry(store, keeper.zone)
        handed_over = newest is not None and isinstance(newest.payload, FencePayload)
        state = AgentState.STANDBY if handed_over else AgentState.PAUSED
    else:
        state = AgentState.ACTIVE  # active or released: the election decides
    if current is not None:
        if current.kind == "activate" and current.status == "running":
            state = AgentState.ACTIVATING
        elif current.kind == "pause":
            paused = record is not None and record.state is LeaseState.PAUSED
            state = await _close_pause(journal, current, state, lease_paused=paused)
    return Start(state, current, record.state.value if record else "absent")


async def _close_pause(
    journal: OperationJournal, op: Operation, state: AgentState, *, lease_paused: bool
) -> AgentState:
    if op.status == "running" and lease_paused:
        await journal.finish(op)  # the lease release, its last phase, had landed
    elif op.status == "running":
        reason = "interrupted by an agent restart; POST /pause to retry, /resume to undo"
        await journal.finish(op, f"{op.phase}: {reason}")
    undone = "resumedAt" in op.result
    if op.status == "failed" and not undone and state is AgentState.ACTIVE:
        return AgentState.FAILED
    return state
