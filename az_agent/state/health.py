"""A zone's published health: ``<zone>/health.json``, written by the zone's leader each round.

The peer reads it to tell a sick zone from a healthy one whose agent merely lives (automatic
failover) and to show both zones in ``/status``. ``sequence`` grows with every publication, so
a reader can tell a fresh verdict from a stale one on its own clock, never comparing wall
clocks across zones; ``measuredAt`` is for operators. The zone's leader publishes with a plain
write (a stale leader's last word is superseded by the next one's sequence); a zone nobody
leads (a standby) is published by its replicas with a compare-and-swap.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from az_agent.drivers.errors import NotFound, PreconditionFailed
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state.clock import Clock, SystemClock
from az_agent.state.errors import StateError
from az_agent.state.keys import check_zone, health_key

log = logging.getLogger(__name__)


class HealthStatus(enum.StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"
    """Nothing could be probed (no leader yet, or the probe itself failed)."""


class HealthCorrupted(StateError):
    """``health.json`` holds something that is not a health record."""


class _Camel(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True
    )


class HealthCheck(_Camel):
    """One probe's verdict: ``ok``, and what it saw (an error, counts)."""

    ok: bool
    detail: str = ""


class ZoneHealth(_Camel):
    """The JSON in ``<zone>/health.json``."""

    zone: str
    status: HealthStatus
    sequence: int = Field(ge=1)
    measured_at: datetime
    holder: str
    checks: dict[str, HealthCheck] = Field(default_factory=dict)

    @property
    def failing(self) -> list[str]:
        """Names of the checks that failed, sorted."""
        return sorted(name for name, check in self.checks.items() if not check.ok)

    def describe(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True)

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> ZoneHealth:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise HealthCorrupted(f"{key}: not a health record: {exc}") from exc


def verdict(checks: Mapping[str, HealthCheck]) -> HealthStatus:
    """Healthy when every check passed, unhealthy when one failed, unknown with none."""
    if not checks:
        return HealthStatus.UNKNOWN
    return HealthStatus.HEALTHY if all(c.ok for c in checks.values()) else HealthStatus.UNHEALTHY


class HealthBoard:
    """Publishes one zone's health and reads any zone's."""

    def __init__(self, store: ObjectStore, zone: str, *, clock: Clock | None = None) -> None:
        self._store = store
        self._zone = check_zone(zone)
        self._clock = clock or SystemClock()
        self._sequence: int | None = None

    @property
    def zone(self) -> str:
        return self._zone

    async def publish(self, checks: Mapping[str, HealthCheck], holder: str) -> ZoneHealth:
        """Write this zone's health with the next sequence number; returns what was written.

        For the zone's leader: the only writer, so a plain write."""
        if self._sequence is None:
            try:
                previous = await self.read(self._zone)
            except HealthCorrupted as exc:
                log.warning("overwriting an unreadable health record: %s", exc)
                previous = None
            self._sequence = previous.sequence if previous is not None else 0
        health = self._record(checks, holder, self._sequence + 1)
        await self._store.put(health_key(self._zone), health.encode())
        self._sequence = health.sequence
        return health

    async def publish_unled(
        self, checks: Mapping[str, HealthCheck], holder: str
    ) -> ZoneHealth | None:
        """Publish for a zone nobody leads (a standby zone, whose replicas all measure it):
        one compare-and-swap over the stored record, so the sequence still only grows. None
        when another replica's write won this round (its verdict stands)."""
        key = health_key(self._zone)
        try:
            data, info = await self._store.get(key)
        except NotFound:
            sequence, version = 0, None
        else:
            try:
                sequence = ZoneHealth.decode(data, key).sequence
            except HealthCorrupted as exc:
                log.warning("overwriting an unreadable health record: %s", exc)
                sequence = 0
            version = info.version
        health = self._record(checks, holder, sequence + 1)
        try:
            await self._store.put(
                key, health.encode(), if_none_match=version is None, if_match=version
            )
        except PreconditionFailed:
            return None
        self._sequence = health.sequence
        return health

    def _record(self, checks: Mapping[str, HealthCheck], holder: str, sequence: int) -> ZoneHealth:
        return ZoneHealth(
            zone=self._zone,
            status=verdict(checks),
            sequence=sequence,
            measured_at=self._clock.now(),
            holder=holder,
            checks=dict(checks),
        )

    async def read(self, zone: str) -> ZoneHealth | None:
        """``zone``'s last published health; None when it never published."""
        key = health_key(zone)
        try:
            data, _ = await self._store.get(key)
        except NotFound:
            return None
        return ZoneHealth.decode(data, key)
