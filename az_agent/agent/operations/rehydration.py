"""The ``rehydrate-segments`` phase of an activation: the plan, the workers, and the progress
an operator follows (journal, ``/status``, metrics) while segments stream bucket -> Pinot."""

from __future__ import annotations

from datetime import datetime

from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.journal import Operation
from az_agent.agent.restore.rehydrate import Rehydrator, plan_rehydration
from az_agent.state import Catalog


async def rehydrate_segments(
    agent: AgentContext,
    op: Operation,
    catalog: Catalog,
    as_of: datetime | None,
    batch_size: int | None,
) -> str:
    """Move every segment of ``catalog`` as of ``as_of`` that the local Pinot lacks; a
    one-line detail.

    Re-planned against Pinot on every run, so a resumed activation moves only what is missing
    and its progress counts what the new plan no longer needs as done.
    """
    plan = await plan_rehydration(agent.deps.pinot, catalog, as_of)
    already = plan.present
    op.progress.plan(plan.segments_total, plan.bytes_total)
    metrics = agent.deps.metrics

    def publish() -> None:
        p = op.progress
        metrics.set_rehydration(p.segments_done, p.segments_total, p.bytes_done, p.bytes_total)

    publish()
    await agent.journal.save(op)
    started, moved = agent.deps.clock.monotonic(), 0

    async def on_progress(segments_done: int, bytes_done: int) -> None:
        nonlocal moved
        moved += bytes_done
        op.progress.advance(segments_done, bytes_done)
        publish()
        elapsed = agent.deps.clock.monotonic() - started
        metrics.rehydration_rate.set(moved / elapsed if elapsed > 0 else 0.0)
        await agent.journal.save_throttled(op)

    settings = agent.deps.config.service.rehydration
    rehydrator = Rehydrator(
        agent.deps.pinot,
        agent.deps.store,
        concurrency=settings.concurrency,
        batch_size=batch_size or settings.batch_size,
        on_progress=on_progress,
    )
    try:
        await rehydrator.run(plan)
    finally:
        metrics.rehydration_rate.set(0)  # nothing moves now: no throughput to show
    return f"{plan.segments_total} segments moved, {already} already present"
