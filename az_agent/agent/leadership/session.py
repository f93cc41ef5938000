"""What a backup loop holds while its agent leads its zone: one epoch's right to commit.

A :class:`LeaderSession` exists from the moment the agent's fence entry for epoch *e* is
written until leadership is lost, the agent is fenced, or it pauses. Backup loops receive it and
go through :meth:`LeaderSession.commit` for every entry, which serialises appends (the log
writer is single-writer) and keeps the live catalog current, so "is this already backed up?" is
answered from memory across loops.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.errors import DriverError
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import (
    Catalog,
    Clock,
    LogEntry,
    LogWriter,
    Payload,
    StateError,
    refresh_catalog,
    write_checkpoint,
)

log = logging.getLogger(__name__)

LAST_CHECKPOINT_SECONDS = 10.0
"""Bound on the checkpoint a session writes as it ends cleanly (a pause, a shutdown): a few
seconds at a million segments (only the tables that changed are rewritten), inside Kubernetes'
30 s between SIGTERM and SIGKILL."""


@dataclass
class LeaderSession:
    """One epoch of leadership over ``zone``: the store, the writer, the live catalog."""

    zone: str
    epoch: int
    store: ObjectStore
    writer: LogWriter
    catalog: Catalog
    metrics: AgentMetrics
    clock: Clock
    term: int = 0
    """The group's term this session writes under (the primary record's, when it began)."""
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def commit(self, payload: Payload) -> LogEntry:
        """Append ``payload`` to the zone's log and apply it to the catalog.

        The data the payload points at must already be durable in the bucket. Raises what
        :meth:`LogWriter.append` raises: ``Fenced`` and ``NotLeader`` end the session (the
        caller must stop writing), storage errors leave the outcome to the next append.
        """
        async with self._lock:
            entry = await self.writer.append(payload)
            if entry.seq > self.catalog.last_seq + 1:
                # The writer stepped over entries that landed although their answer was lost
                # (an earlier append that raised): read them in, in order, before this one.
                await refresh_catalog(self.store, self.catalog)
            if entry.seq > self.catalog.last_seq:
                self.catalog.apply(entry)
            return entry

    @property
    def is_usable(self) -> bool:
        """False once the writer has been fenced; loops stop instead of retrying."""
        return not self.writer.is_fenced

    async def checkpoint_last(self, within: float = LAST_CHECKPOINT_SECONDS) -> str:
        """Checkpoint the catalog if entries follow its newest checkpoint, as the session ends
        cleanly: whoever reads the zone next (the other zone's activation after a pause or a
        planned stop, this agent restarted) then GETs one object instead of one per entry,
        64 reads past the tail included. Best effort: the log is complete without it, so a
        failure or the time running out is logged and said, not raised."""
        catalog = self.catalog
        if catalog.last_seq <= catalog.checkpoint_seq:
            return f"entry {catalog.last_seq} is checkpointed"
        try:
            async with asyncio.timeout(within):
                await write_checkpoint(self.store, catalog, clock=self.clock)
        except (DriverError, StateError, TimeoutError) as exc:
            reason = str(exc) or f"not written within {within:g} s"
            log.warning("zone %s: last checkpoint not written: %s", self.zone, reason)
            return f"checkpoint not written: {reason}"
        return f"checkpoint at entry {catalog.checkpoint_seq}"
