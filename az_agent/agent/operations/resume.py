"""``POST /resume``: lift this agent's silences; resume a paused zone that nobody took over.

After an activation, an operator checks the new cluster and calls ``/resume`` to unsilence its
alerts. On a ``PAUSED`` agent whose zone was not taken over (its log still ends with its own
``paused`` entry), ``/resume`` undoes the pause in place: the lease is taken back with the next
epoch, ingestion resumes from where it stopped, and the silences are lifted.
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
from az_agent.state import FencePayload, last_entry

log = logging.getLogger(__name__)


async def resume(agent: AgentContext) -> tuple[int, dict[str, Any]]:
    transition(agent.state, Request.RESUME)  # 409 unless ACTIVE or PAUSED
    if agent.state is AgentState.ACTIVE:
        lifted = await lift_silences(agent)
        return 200, {"state": agent.state.value, "silencesLifted": lifted}
    newest = await last_entry(agent.deps.store, agent.zone)
    if newest is not None and isinstance(newest.payload, FencePayload):
        raise WrongState(
            f"zone {agent.zone} was taken over ({newest.payload.by}); activate from the zone "
            "that took it to fail back",
            state=agent.state.value,
        )
    epoch = await agent.keeper.take_over(force=True)
    agent.set_state(Request.RESUME)
    resumed = []
    try:
        for table in await realtime_tables(agent):
            await agent.deps.pinot.resume_consumption(
                table.raw, consume_from=ConsumeFrom.LAST_CONSUMED, comment="az-agent resume"
            )
            resumed.append(table.raw)
    except DriverError as exc:
        log.warning("resuming consumption failed (the backup loops still run): %s", exc)
    lifted = await lift_silences(agent)
    log.info("zone %s resumed in place with epoch %d", agent.zone, epoch)
    return 200, {
        "state": agent.state.value,
        "epoch": epoch,
        "tablesResumed": resumed,
        "silencesLifted": lifted,
    }
