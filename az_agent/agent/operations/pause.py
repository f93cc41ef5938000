"""``POST /pause``: hand the zone over without losing anything.

Silence alerts, pause ingestion, wait until the consuming segments are committed (unless
``force``), back up every remaining segment, take a final dump of every database, stop the
backup loops (the session and its writer stay), write the ``paused`` handover entry, which is
thus the term's last entry, then end the session and release the lease as ``paused`` so the
other zone can activate at once. With ``force`` (Pinot or Kafka unreachable), steps that need
Pinot are attempted and their failures recorded instead of failing the pause.

With ``coldStandby.scaleDownOnPause`` a last phase, ``scale-down``, records the sizes of the
zone's workloads and scales them to zero. It comes after the lease release, when the handover
is complete and nothing of this zone needs them any more, and it is best effort: the pause has
succeeded by then, so a failure is a warning on the operation (scale down by hand), never a
``FAILED`` agent that would lead and back up again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from az_agent.agent.errors import WrongState
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.observability.logs import log_context
from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.journal import Operation
from az_agent.agent.operations.phases import fail, run_phases
from az_agent.agent.operations.requests import PauseRequest
from az_agent.agent.operations.silences import silence_alerts
from az_agent.agent.operations.states import Request, holds, transition
from az_agent.drivers.errors import DriverError
from az_agent.drivers.pinot.models import TableRef, TableType
from az_agent.state import LeaseState, PausedPayload, StateError

log = logging.getLogger(__name__)

PHASES = (
    "silence-alerts",
    "pause-consumption",
    "wait-committed",
    "flush-segments",
    "final-dump",
    "stop-backups",
    "write-handover",
    "release-lease",
)
SCALE_DOWN = "scale-down"
"""The last phase, only with ``coldStandby.scaleDownOnPause``."""
COMMIT_WAIT_SECONDS = 300.0


async def realtime_tables(agent: AgentContext) -> list[TableRef]:
    """The REALTIME tables in scope: the configured ones, or every table."""
    wanted = set(agent.deps.config.service.pinot.tables)
    tables = await agent.deps.pinot.list_tables(TableType.REALTIME)
    return [t for t in tables if not wanted or t.raw in wanted]


def already_paused(agent: AgentContext) -> tuple[int, dict[str, Any]] | None:
    """200 with the current state when a pause already holds (``PAUSED``), else None."""
    if not holds(agent.state, Request.PAUSE):
        return None
    op = agent.operation
    described = op.describe(agent.deps.clock.now()) if op is not None else None
    return 200, {"state": agent.state.value, "alreadyHeld": True, "operation": described}


class Pause:
    """One pause operation; :meth:`begin` validates and records it, :meth:`run` carries it out."""

    def __init__(self, agent: AgentContext, request: PauseRequest) -> None:
        self.agent = agent
        self.request = request
        self.op: Operation | None = None

    async def begin(self) -> Operation:
        agent = self.agent
        transition(agent.state, Request.PAUSE)  # IllegalTransition (409) unless ACTIVE or FAILED
        if not agent.keeper.is_leader:
            # Another replica of this zone leads (or none yet): pausing Pinot from here would
            # stop ingestion while the leader goes on, and the handover could not be written.
            lease = agent.keeper.status()
            raise WrongState(
                f"this agent does not lead zone {agent.zone} (its lease is held by "
                f"{lease.record_holder or 'nobody'}): send /pause to the leading replica",
                state=agent.state.value,
                leader=lease.record_holder,
            )
        agent.set_state(Request.PAUSE)
        self.op = Operation.start(
            "pause",
            PHASES + ((SCALE_DOWN,) if self._scales_down() else ()),
            agent.deps.clock.now(),
            request={"force": self.request.force},
            epoch=agent.keeper.epoch,
        )
        agent.operation = self.op
        await agent.journal.save(self.op)
        return self.op

    async def run(self) -> None:
        op = self.op
        assert op is not None
        with log_context(operation=op.id, zone=self.agent.zone):
            try:
                await run_phases(self.agent, op, self._steps())
            except Exception as exc:  # every failure ends FAILED with its reason, retryable
                await fail(self.agent, op, exc)
                return
            await self.agent.journal.finish(op)
            total = (op.finished_at - op.started_at).total_seconds() if op.finished_at else 0.0
            self.agent.deps.metrics.pause_duration.set(total)
            self.agent.set_state(Request.FINISH)
            log.info(
                "zone %s paused in %.1fs: handover written, lease released", self.agent.zone, total
            )

    def _steps(self) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
        return [
            ("silence-alerts", self._silence),
            ("pause-consumption", self._pause_consumption),
            ("wait-committed", self._wait_committed),
            ("flush-segments", self._flush_segments),
            ("final-dump", self._final_dump),
            ("stop-backups", self._stop_backups),
            ("write-handover", self._write_handover),
            ("release-lease", self._release_lease),
            *([(SCALE_DOWN, self._scale_down)] if self._scales_down() else []),
        ]

    def _scales_down(self) -> bool:
        deps = self.agent.deps
        return (
            deps.cold_standby is not None and deps.config.service.cold_standby.scale_down_on_pause
        )

    async def _tolerant(self, what: str, error: Exception) -> str:
        """With ``force``, a Pinot failure is recorded and the pause goes on."""
        if not self.request.force:
            raise error
        log.warning("force: %s failed and is skipped: %s", what, error)
        return f"skipped (force): {error}"

    async def _silence(self) -> str:
        assert self.op is not None
        return await silence_alerts(self.agent, self.op, "pause")

    async def _pause_consumption(self) -> str:
        try:
            tables = await realtime_tables(self.agent)
            for table in tables:
                await self.agent.deps.pinot.pause_consumption(
                    table.raw, comment=f"az-agent {self.op.id if self.op else ''}"
                )
        except DriverError as exc:
            return await self._tolerant("pausing consumption", exc)
        return f"{len(tables)} realtime tables paused"

    async def _wait_committed(self) -> str:
        if self.request.force:
            return "skipped (force)"
        pinot = self.agent.deps.pinot
        tables = await realtime_tables(self.agent)
        clock = self.agent.deps.clock

        async def wait_all() -> None:
            pending = list(tables)
            while pending:
                statuses = [await pinot.pause_status(t.raw) for t in pending]
                pending = [t for t, s in zip(pending, statuses, strict=True) if not s.is_flushed]
                if pending:
                    await clock.sleep(0.5)

        await asyncio.wait_for(wait_all(), COMMIT_WAIT_SECONDS)
        return f"consuming segments of {len(tables)} tables committed"

    async def _flush_segments(self) -> str:
        session = self._session()
        try:
            count = await self.agent.deps.segment_backup.flush(session)
        except DriverError as exc:
            return await self._tolerant("backing up the last segments", exc)
        return f"{count} segments backed up"

    async def _final_dump(self) -> str:
        backup = self.agent.deps.database_backup
        if backup is None:
            return "no databases configured"
        results = await backup.dump_now("pause")
        return f"{len(results)} databases dumped"

    async def _stop_backups(self) -> str:
        await self.agent.stop_backups()
        return "backup loops stopped; the session's writer commits the handover"

    async def _write_handover(self) -> str:
        session = self._session()
        catalog = session.catalog
        newest_segment = catalog.newest_segment_seq()
        dump_seqs: dict[str, int] = {}
        checksums: dict[str, str] = {}
        for database in catalog.databases():
            dump = catalog.newest_dump(database)
            if dump is not None:
                dump_seqs[database] = dump.seq
                checksums[database] = dump.sha256
        await session.commit(
            PausedPayload.model_validate(
                {
                    "epoch": session.epoch,
                    "newestSegmentSeq": newest_segment,
                    "dumpSeqs": dump_seqs,
                    "checksums": checksums,
                    "forced": self.request.force,
                    "detail": f"{catalog.segment_count} segments committed",
                }
            )
        )
        return f"handover at entry {catalog.last_seq}; {await session.checkpoint_last()}"

    async def _release_lease(self) -> str:
        await self.agent.stop_session()
        released = await self.agent.keeper.release(LeaseState.PAUSED)
        return "lease paused" if released else "lease was no longer ours"

    async def _scale_down(self) -> str:
        cold, op = self.agent.deps.cold_standby, self.op
        assert cold is not None
        assert op is not None
        try:
            return await cold.scale_down(op.epoch or 0)
        except (DriverError, StateError) as exc:
            warning = f"workloads not scaled down (scale them to 0 by hand): {exc}"
            log.warning("%s", warning)
            op.warnings.append(warning)
            return f"failed: {exc}"

    def _session(self) -> LeaderSession:
        session = self.agent.session
        if session is None:
            raise StateError(f"zone {self.agent.zone}: not leading (no lease), cannot pause")
        return session
