"""Retention of the bucket: the backup mirrors what Pinot holds, not everything it ever held.

While the agent leads its zone, :class:`RetentionLoop` runs one pass every
``retention.intervalMinutes`` of the injected clock (the first one interval after the session
starts):

1. Segments deleted from Pinot (``segment-deleted`` entries, see
   :mod:`~az_agent.agent.backup.deletions`) longer than ``deletedSegmentGraceHours`` ago are
   purged: a ``segments-purged`` entry first (the catalog forgets them), then their objects,
   every version. A key the catalog references again (the segment was backed up anew since)
   is never deleted; a purge entry whose deletes did not all happen leaves orphans, which step
   3 removes later.
2. A checkpoint is written when the log moved since the newest one; checkpoints beyond
   ``keepCheckpoints`` are deleted, then the log entries older than the oldest one kept.
3. Orphans (data objects no entry references) older than ``orphanGraceHours`` are deleted.

PostgreSQL dumps follow their own retention (``postgres.retention``, in the dump loop).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from az_agent.agent.config import BucketRetentionSettings
from az_agent.agent.leadership.session import LeaderSession
from az_agent.drivers.errors import DriverError, NotFound
from az_agent.state import (
    Clock,
    Fenced,
    NotLeader,
    SegmentDeletion,
    SegmentsPurgedPayload,
    StateError,
    prune_checkpoints,
    sweep_orphans,
    truncate_log,
    write_checkpoint,
)
from az_agent.state.log import checkpoint_seqs

log = logging.getLogger(__name__)

PURGE_BATCH = 500
"""Segments named by one ``segments-purged`` entry (keeps each entry small)."""


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one pass removed."""

    purged_segments: int = 0
    segment_objects: int = 0
    checkpoints: int = 0
    log_entries: int = 0
    orphans: int = 0


class RetentionLoop:
    """The agent's retention (module docstring). One :meth:`run` per leader session."""

    def __init__(self, settings: BucketRetentionSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self.last: RetentionReport | None = None

    async def run(self, session: LeaderSession) -> None:
        """A pass every interval until cancelled; returns quietly when fenced or not leader."""
        interval = self._settings.interval_minutes * 60
        log.info("zone %s: bucket retention runs every %.0f s", session.zone, interval)
        while session.is_usable:
            await self._clock.sleep(interval)
            try:
                await self.run_once(session)
            except (Fenced, NotLeader) as exc:
                log.info("zone %s: bucket retention stops: %s", session.zone, exc)
                return
            except (DriverError, StateError) as exc:
                log.warning("retention pass failed, next in %.0f s: %s", interval, exc)

    async def run_once(self, session: LeaderSession) -> RetentionReport:
        """One pass: purge, checkpoints and log, orphans (in that order)."""
        purged, objects = await self._purge(session)
        checkpoints, entries = await self._compact(session)
        grace = timedelta(hours=self._settings.orphan_grace_hours)
        store, zone = session.store, session.zone
        orphans = await sweep_orphans(store, zone, session.catalog, grace, self._clock)
        self.last = RetentionReport(purged, objects, checkpoints, entries, len(orphans))
        log.info(
            "zone %s: retention purged %d deleted segments (%d objects), %d checkpoints, "
            "%d log entries, %d orphans",
            session.zone,
            purged,
            objects,
            checkpoints,
            entries,
            len(orphans),
        )
        return self.last

    async def _purge(self, session: LeaderSession) -> tuple[int, int]:
        grace = self._settings.deleted_segment_grace_hours * 3600
        cutoff = self._clock.now().timestamp() - grace
        due = [d for d in session.catalog.deletions() if d.committed_ts <= cutoff]
        objects = 0
        for start in range(0, len(due), PURGE_BATCH):
            objects += await self._purge_batch(session, due[start : start + PURGE_BATCH])
        return len(due), objects

    async def _purge_batch(self, session: LeaderSession, batch: list[SegmentDeletion]) -> int:
        catalog = session.catalog
        keys = {v.object_key for d in batch for v in catalog.versions(d.table, d.name)}
        await session.commit(SegmentsPurgedPayload(segments=[(d.table, d.name) for d in batch]))
        deleted = 0
        for key in sorted(keys):
            if catalog.references(key):
                continue  # a live entry names this object again
            with contextlib.suppress(NotFound):
                await session.store.delete(key)
                deleted += 1
        return deleted

    async def _compact(self, session: LeaderSession) -> tuple[int, int]:
        seqs = await checkpoint_seqs(session.store, session.zone)
        if session.catalog.last_seq > (seqs[0] if seqs else 0):
            await write_checkpoint(session.store, session.catalog, clock=self._clock)
        keep = self._settings.keep_checkpoints
        pruned = await prune_checkpoints(session.store, session.zone, keep)
        return pruned, await truncate_log(session.store, session.zone)


__all__ = ["RetentionLoop", "RetentionReport"]
