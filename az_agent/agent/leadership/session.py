"""What a backup loop holds while its agent leads its zone: one epoch's right to commit.

A :class:`LeaderSession` exists from the moment the agent's fence entry for epoch *e* is
written until leadership is lost, the agent is fenced, or it pauses. Backup loops receive it and
go through :meth:`LeaderSession.commit` for every entry, which serialises appends (the log
writer is single-writer) and keeps the live catalog current, so "is this already backed up?" is
answered from memory across loops.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import Catalog, Clock, LogEntry, LogWriter, Payload, refresh_catalog


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
