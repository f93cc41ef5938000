"""Alert silences of an operation: created on pause or activation, lifted by ``/resume``.

Intent first. Alertmanager chooses a silence's id only in its answer, so an agent that crashed
between that answer and its own write would leave a silence nobody lifts (until it ends by
itself, hours later). The agent therefore records a fresh tag in ``silences.json`` before it
asks, puts the tag in the silence's comment, and records the id once it has it. ``/resume``
expires every recorded id and, for a tag recorded without an id, every silence whose comment
carries the tag.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.journal import Operation, SilenceRecord
from az_agent.drivers.alerts import SilenceState

TAG_PREFIX = "az-agent-silence"


async def silence_alerts(agent: AgentContext, op: Operation, reason: str) -> str:
    """Silence this zone's alerts for ``op``; its tag is persisted before it is created."""
    silences = agent.deps.silences
    if not silences.enabled:
        return "no Alertmanager configured"
    hours = agent.deps.config.service.alertmanager.silence_hours
    tag = f"{TAG_PREFIX} {uuid.uuid4().hex}"
    await _remember(agent, SilenceRecord(tag=tag))
    silence_id = await silences.silence(
        comment=f"az-agent zone {agent.zone}: {op.id} ({reason}); lifted by POST /resume [{tag}]",
        duration=timedelta(hours=hours),
    )
    if not silence_id:
        return "silencing disabled"
    await _remember(agent, SilenceRecord(tag=tag, id=silence_id))
    op.silences.append(silence_id)
    await agent.journal.save(op)
    return f"silence {silence_id} until it is lifted or {hours:g}h pass"


async def _remember(agent: AgentContext, record: SilenceRecord) -> None:
    """Add ``record`` to ``silences.json``, in place of the one with the same tag."""
    kept = [r for r in await agent.journal.load_silences() if not (r.tag and r.tag == record.tag)]
    await agent.journal.save_silences([*kept, record])


async def lift_silences(agent: AgentContext) -> list[str]:
    """Expire every silence this zone's agent created and has not lifted; idempotent."""
    remembered = await agent.journal.load_silences()
    lifted: list[str] = []
    for record in remembered:
        for silence_id in await _silence_ids(agent, record):
            await agent.deps.silences.expire(silence_id)
            lifted.append(silence_id)
    if remembered:
        await agent.journal.save_silences([])
    return lifted


async def _silence_ids(agent: AgentContext, record: SilenceRecord) -> list[str]:
    """The recorded id, or the live silences carrying the tag (a crash before the id landed;
    none when the creation itself failed)."""
    if record.id:
        return [record.id]
    if not record.tag:
        return []
    found = await agent.deps.silences.find(comment_contains=record.tag)
    return [s.id for s in found if s.state is not SilenceState.EXPIRED]
