"""Alert silences of an operation: created on pause or activation, lifted by ``/resume``.

Intent first. Alertmanager chooses a silence's id only in its answer, so an agent that crashed
between that answer and its own write would leave a silence nobody lifts (until it ends by
itself, hours later). The agent therefore records a fresh tag in ``silences.json`` before it
asks, puts the tag in the silence's comment, and records the id once it has it. ``/resume``
expires every recorded id and, for a tag recorded without an id, every silence whose comment
carries the tag.

Best effort. A failover never fails or waits because Alertmanager is down or refuses: the
failure becomes a warning of the operation, a log line and ``az_agent_silence_failures_total``,
and :class:`SilenceRetry` creates the silence later (each request is bounded by
``alertmanager.timeoutSeconds``). Its record keeps the comment and the intended end, so a late
silence ends when the first one would have; ``/resume`` drops what is still pending. Every
read-modify-write of ``silences.json`` holds one lock, so the retry never resurrects a record
that ``/resume`` has just lifted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from az_agent.agent.backoff import backoff_delay
from az_agent.agent.operations.journal import Operation, SilenceRecord
from az_agent.drivers.alerts import SilenceState
from az_agent.drivers.errors import DriverError

if TYPE_CHECKING:
    from az_agent.agent.operations.context import AgentContext

log = logging.getLogger(__name__)

TAG_PREFIX = "az-agent-silence"


class SilenceRetry:
    """The lock over ``silences.json`` and the loop that creates the silences an operation
    could not (owned by the agent's task group; woken by a failure, and once at start for
    records a previous incarnation left pending)."""

    def __init__(self, *, low_seconds: float = 1.0, high_seconds: float = 300.0) -> None:
        self.lock = asyncio.Lock()
        self.low_seconds, self.high_seconds = low_seconds, high_seconds
        self._wake = asyncio.Event()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, agent: AgentContext) -> None:
        """Retry pending silences with backoff until none is left; then wait to be woken."""
        attempt = 0
        while True:
            if attempt == 0:
                await self._wake.wait()
            self._wake.clear()
            try:
                left = await retry_silences(agent)
            except DriverError as exc:  # the bucket: the silences wait for it
                log.warning("retrying alert silences: %s", exc)
                left = 1
            except Exception:  # a crash here must not end the agent: log, back off, retry
                log.exception("retrying alert silences failed")
                left = 1
            attempt = attempt + 1 if left else 0
            if left:
                delay = backoff_delay(attempt, self.low_seconds, self.high_seconds)
                log.info("%d silences still pending, next attempt in %.1fs", left, delay)
                await agent.deps.clock.sleep(delay)


async def silence_alerts(agent: AgentContext, op: Operation, reason: str) -> str:
    """Silence this zone's alerts for ``op``; its tag is persisted before it is created."""
    silences = agent.deps.silences
    if not silences.enabled:
        return "no Alertmanager configured"
    hours = agent.deps.config.service.alertmanager.silence_hours
    tag = f"{TAG_PREFIX} {uuid.uuid4().hex}"
    comment = f"az-agent zone {agent.zone}: {op.id} ({reason}); lifted by POST /resume [{tag}]"
    record = SilenceRecord(
        tag=tag, comment=comment, ends_at=agent.deps.clock.now() + timedelta(hours=hours)
    )
    try:
        await _remember(agent, record)
        silence_id = await silences.silence(comment=comment, duration=timedelta(hours=hours))
    except DriverError as exc:
        return await _not_silenced(agent, op, exc)
    if not silence_id:
        return "silencing disabled"
    if not await _settle(agent, record, silence_id):
        return f"silence {silence_id} lifted at once: /resume came first"
    op.silences.append(silence_id)
    await agent.journal.save(op)
    return f"silence {silence_id} until it is lifted or {hours:g}h pass"


async def _not_silenced(agent: AgentContext, op: Operation, exc: DriverError) -> str:
    """Record a failed silence as a warning of ``op`` and leave it to :class:`SilenceRetry`."""
    warning = f"alerts not silenced, retried until POST /resume: {exc}"
    log.warning("%s: %s", op.id, warning)
    agent.deps.metrics.silence_failures.inc()
    op.warnings.append(warning)
    await agent.journal.save(op)
    agent.silence_retry.wake()
    return warning


async def _remember(agent: AgentContext, record: SilenceRecord) -> None:
    """Add ``record`` to ``silences.json``, in place of the one with the same tag."""
    async with agent.silence_retry.lock:
        records = await agent.journal.load_silences()
        kept = [r for r in records if not (r.tag and r.tag == record.tag)]
        await agent.journal.save_silences([*kept, record])


async def _settle(agent: AgentContext, record: SilenceRecord, silence_id: str) -> bool:
    """Record ``silence_id`` as the silence of ``record``; when ``/resume`` dropped the record
    meanwhile, expire the silence instead and return False."""
    async with agent.silence_retry.lock:
        records = await agent.journal.load_silences()
        if any(r.tag == record.tag for r in records):
            settled = record.model_copy(update={"id": silence_id})
            kept = [r for r in records if r.tag != record.tag]
            await agent.journal.save_silences([*kept, settled])
            return True
    await agent.deps.silences.expire(silence_id)
    return False


async def retry_silences(agent: AgentContext) -> int:
    """Create the silences recorded with an intended end but no id; how many are still
    pending. One already created (its answer lost, or a crash) is found by its tag, not
    created twice; one whose end has passed is dropped."""
    if not agent.deps.silences.enabled:
        return 0
    pending = [r for r in await agent.journal.load_silences() if not r.id and r.ends_at]
    left = 0
    for record in pending:
        try:
            await _retry_one(agent, record)
        except DriverError as exc:
            left += 1
            agent.deps.metrics.silence_failures.inc()
            log.warning("silence [%s] still not created: %s", record.tag, exc)
    return left


async def _retry_one(agent: AgentContext, record: SilenceRecord) -> None:
    assert record.ends_at is not None
    found = await _silence_ids(agent, record)
    if found:
        await _settle(agent, record, found[0])
        return
    remaining = record.ends_at - agent.deps.clock.now()
    if remaining <= timedelta(0):
        async with agent.silence_retry.lock:
            records = await agent.journal.load_silences()
            await agent.journal.save_silences([r for r in records if r.tag != record.tag])
        log.warning("silence [%s] dropped: its end passed before it could be created", record.tag)
        return
    silence_id = await agent.deps.silences.silence(comment=record.comment, duration=remaining)
    if silence_id and await _settle(agent, record, silence_id):
        log.info("silence %s created on retry (%s)", silence_id, record.comment)


async def lift_silences(agent: AgentContext) -> list[str]:
    """Expire every silence this zone's agent created and has not lifted; idempotent.
    Silences still pending are dropped (the retry stops)."""
    async with agent.silence_retry.lock:
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
