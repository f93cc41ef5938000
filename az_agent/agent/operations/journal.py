"""Long operations (pause, activate) as records with phases and progress, kept in the bucket.

The current operation of a zone lives at ``<zone>/operations/current.json`` and is rewritten
after each phase and periodically while segments move, so an agent restarted mid-activation
finds where it stopped. Finished operations are copied to ``<zone>/operations/<id>.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from az_agent.drivers.errors import DriverError, NotFound
from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.keys import join_key
from az_agent.state import Clock

log = logging.getLogger(__name__)

Kind = Literal["pause", "activate"]
Status = Literal["running", "succeeded", "failed"]
PhaseStatus = Literal["pending", "running", "done", "failed", "skipped"]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Phase(_Model):
    name: str
    status: PhaseStatus = "pending"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    detail: str = ""

    @property
    def seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at
        if end is None:
            return None
        return (end - self.started_at).total_seconds()


class Progress(_Model):
    segments_total: int = 0
    segments_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0

    def plan(self, segments: int, size: int) -> None:
        """A rehydration plan of ``segments`` still to move (``size`` bytes). The first fixes
        the totals; a later one (resumed after a restart, when the saved counters may lag
        behind a crash) makes done what it no longer needs, never below 0 (a larger plan:
        segments lost from Pinot meanwhile)."""
        if self.segments_total:
            self.segments_done = max(self.segments_total - segments, 0)
            self.bytes_done = max(self.bytes_total - size, 0)
        else:
            self.segments_total, self.bytes_total = segments, size

    def advance(self, segments: int, size: int) -> None:
        """Count moved segments; ``done`` never exceeds ``total``."""
        self.segments_done = min(self.segments_done + segments, self.segments_total)
        self.bytes_done = min(self.bytes_done + size, self.bytes_total)


class Operation(_Model):
    id: str
    kind: Kind
    status: Status = "running"
    phases: list[Phase]
    progress: Progress = Field(default_factory=Progress)
    error: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    source_zone: str | None = None
    epoch: int | None = None
    silences: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    """What went wrong without failing the operation (alerts not silenced, ...)."""
    result: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def start(cls, kind: Kind, phases: Sequence[str], now: datetime, **fields: Any) -> Operation:
        op_id = f"{kind}-{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
        return cls(
            id=op_id,
            kind=kind,
            phases=[Phase(name=name) for name in phases],
            started_at=now,
            **fields,
        )

    @property
    def phase(self) -> str | None:
        """The running phase, else the last one reached."""
        current = None
        for phase in self.phases:
            if phase.status == "running":
                return phase.name
            if phase.status != "pending":
                current = phase.name
        return current

    def get_phase(self, name: str) -> Phase:
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(name)

    def is_done(self, name: str) -> bool:
        return self.get_phase(name).status in ("done", "skipped")

    def describe(self, now: datetime) -> dict[str, Any]:
        """The ``operation`` object of ``/status`` (names scripts depend on are kept stable)."""
        elapsed = ((self.finished_at or now) - self.started_at).total_seconds()
        rate = self.progress.bytes_done / elapsed if elapsed > 0 else 0.0
        remaining = self.progress.bytes_total - self.progress.bytes_done
        eta = remaining / rate if rate > 0 and self.status == "running" else None
        return {
            "id": self.id,
            "kind": self.kind,
            "phase": self.phase,
            "status": self.status,
            "progress": self.progress.model_dump(by_alias=True),
            "error": self.error,
            "startedAt": self.started_at.isoformat(),
            "finishedAt": self.finished_at.isoformat() if self.finished_at else None,
            "durationSeconds": round(elapsed, 3),
            "bytesPerSecond": round(rate, 1),
            "etaSeconds": round(eta, 1) if eta is not None else None,
            "phases": [
                {"name": p.name, "status": p.status, "seconds": p.seconds, "detail": p.detail}
                for p in self.phases
            ],
            "request": self.request,
            "sourceZone": self.source_zone,
            "result": self.result,
            "warnings": self.warnings,
        }


class SilenceRecord(_Model):
    """A silence this zone's agent meant to create: ``tag`` (put in its comment) is recorded
    before Alertmanager is asked, ``id`` once it answered; either finds the silence again.
    ``comment`` and ``ends_at`` let a silence whose creation failed be created later."""

    tag: str = ""
    id: str | None = None
    comment: str = ""
    ends_at: datetime | None = None


def silences_key(zone: str) -> str:
    return join_key(zone, "operations", "silences.json")


def current_key(zone: str) -> str:
    return join_key(zone, "operations", "current.json")


def history_key(zone: str, op_id: str) -> str:
    return join_key(zone, "operations", f"{op_id}.json")


class OperationJournal:
    """Writes one zone's operation records; a failed write is logged, never fatal mid-phase
    (the record is advisory for resumption; the log and the catalog are the truth)."""

    def __init__(self, store: ObjectStore, zone: str, clock: Clock) -> None:
        self._store = store
        self._zone = zone
        self._clock = clock
        self._last_save = 0.0
        self._saving = asyncio.Lock()

    async def load_current(self) -> Operation | None:
        try:
            data, _ = await self._store.get(current_key(self._zone))
        except NotFound:
            return None
        return Operation.model_validate_json(data)

    async def save(self, op: Operation) -> None:
        """Write ``op`` as it is when its turn comes: saves are serialised, so a save started
        while a phase works never lands after a later one."""
        async with self._saving:
            await self._save(op)

    async def _save(self, op: Operation) -> None:
        body = op.model_dump_json(by_alias=True).encode()
        keys = [current_key(self._zone)]
        if op.status != "running":
            keys.append(history_key(self._zone, op.id))  # written beside it: one round trip
        results = await asyncio.gather(
            *(self._store.put(key, body) for key in keys), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, DriverError):
                raise failure
            log.warning("could not checkpoint operation %s: %s", op.id, failure)
        if not failures:
            self._last_save = time.monotonic()

    async def load_silences(self) -> list[SilenceRecord]:
        """Silences this zone's agent meant to create and no ``/resume`` has lifted yet (a bare
        id, as older agents wrote them, reads as a record without a tag)."""
        try:
            data, _ = await self._store.get(silences_key(self._zone))
        except NotFound:
            return []
        return [
            SilenceRecord(id=str(item))
            if isinstance(item, str)
            else SilenceRecord.model_validate(item)
            for item in json.loads(data)
        ]

    async def save_silences(self, records: list[SilenceRecord]) -> None:
        """Persisted before the silence is created (its tag) and again once Alertmanager gave
        its id, so a restarted agent can still lift it."""
        body = [record.model_dump(mode="json", by_alias=True) for record in records]
        await self._store.put(silences_key(self._zone), json.dumps(body).encode())

    async def save_throttled(self, op: Operation, every_seconds: float = 2.0) -> None:
        """Checkpoint progress at most every ``every_seconds`` (segment-level updates)."""
        if time.monotonic() - self._last_save >= every_seconds:
            await self.save(op)

    def begin_phase(self, op: Operation, name: str) -> None:
        """Mark ``name`` running (in memory: :func:`~.phases.run_phases` decides the saves)."""
        phase = op.get_phase(name)
        phase.status = "running"
        phase.started_at = self._clock.now()
        phase.finished_at = None

    def end_phase(
        self, op: Operation, name: str, detail: str = "", *, skipped: bool = False
    ) -> None:
        """Mark ``name`` done (in memory, like :meth:`begin_phase`)."""
        phase = op.get_phase(name)
        phase.status = "skipped" if skipped else "done"
        if phase.started_at is None:
            phase.started_at = self._clock.now()
        phase.finished_at = self._clock.now()
        phase.detail = detail

    async def finish(self, op: Operation, error: str | None = None) -> None:
        op.status = "failed" if error else "succeeded"
        op.error = error
        op.finished_at = self._clock.now()
        for phase in op.phases:
            if phase.status == "running":
                phase.status = "failed" if error else "done"
                phase.finished_at = op.finished_at
        await self.save(op)
