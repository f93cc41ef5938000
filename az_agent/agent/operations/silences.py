"""Alert silences of an operation: created on pause or activation, lifted by ``/resume``."""

from __future__ import annotations

from datetime import timedelta

from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.journal import Operation


async def silence_alerts(agent: AgentContext, op: Operation, reason: str) -> str:
    """Silence this zone's alerts for ``op``; the id is persisted before anything else."""
    silences = agent.deps.silences
    if not silences.enabled:
        return "no Alertmanager configured"
    hours = agent.deps.config.service.alertmanager.silence_hours
    silence_id = await silences.silence(
        comment=f"az-agent zone {agent.zone}: {op.id} ({reason}); lifted by POST /resume",
        duration=timedelta(hours=hours),
    )
    if not silence_id:
        return "silencing disabled"
    remembered = await agent.journal.load_silences()
    await agent.journal.save_silences([*remembered, silence_id])
    op.silences.append(silence_id)
    await agent.journal.save(op)
    return f"silence {silence_id} until it is lifted or {hours:g}h pass"


async def lift_silences(agent: AgentContext) -> list[str]:
    """Expire every silence this zone's agent created and has not lifted; idempotent."""
    remembered = await agent.journal.load_silences()
    for silence_id in remembered:
        await agent.deps.silences.expire(silence_id)
    if remembered:
        await agent.journal.save_silences([])
    return remembered
