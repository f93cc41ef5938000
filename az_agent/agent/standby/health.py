"""The zone health watch: every agent probes its own zone each lease round; the zone's leader
publishes the verdict in ``<zone>/health.json``; every agent reads its peer zone's.

Checks (each bounded by ``limit_seconds``, none ever raises; a failure is ``ok: false`` with why):

``pinot-controller``
    ``GET /health`` answers OK.
``pinot-brokers``, ``pinot-servers``
    ``GET /instances`` and ``GET /liveinstances`` (Helix liveness): ok while at least one
    registered broker (server) is live. One down out of several is named in the detail but
    does not fail the check: a rolling restart must not read as a sick zone. Servers missing
    under a consuming segment show in ``ingestion``.
``postgres``
    One round trip; only when databases are configured.
``ingestion``
    Every (configured) REALTIME table whose consumption is not paused: the controller's
    ingestion status is HEALTHY (every replica of every consuming segment answers and
    consumes) and it has a consuming segment. A paused table (a planned pause, a warm
    standby's followed tables) is left out, not held against the zone. Offsets are not
    compared between rounds: a stream that stops producing is not a sick zone.

The probes of ``pinot-controller`` and ``postgres`` are also the agent's dependency probes
(``/status`` ``dependencies``, ``az_agent_dependency_up``): one loop probes them, not two.
A round costs the controller four requests plus two per REALTIME table (at most four tables
at a time); ``/tables/{t}/status`` asks the table's servers in turn, as ``consumingSegmentsInfo``
does.

Which zone is the peer (:func:`peer_zone_of`): the group's primary zone when it is not this
one; else ``automaticFailover.sourceZone``; else the zone the primary record says it was taken
from. A standby zone has no lease holder: its replicas publish it with a compare-and-swap
(:meth:`HealthBoard.publish_unled`), so the primary sees its standby's health too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.errors import DriverError
from az_agent.drivers.pinot.base import PinotController
from az_agent.drivers.pinot.models import (
    ClusterInstances,
    IngestionState,
    InstanceKind,
    TableRef,
    TableType,
)
from az_agent.state import Clock, HealthBoard, HealthCheck, PrimaryRecord, StateError, ZoneHealth
from az_agent.state.health import verdict

log = logging.getLogger(__name__)

CONTROLLER = "pinot-controller"
BROKERS = "pinot-brokers"
SERVERS = "pinot-servers"
POSTGRES = "postgres"
INGESTION = "ingestion"
PROBE_TIMEOUT_SECONDS = 5.0
_TABLE_CONCURRENCY = 4

Ping = Callable[[], Awaitable[Any]]


def failed(exc: BaseException) -> HealthCheck:
    """A check that could not pass, with the one-line error the dependency probes show."""
    return HealthCheck(ok=False, detail=f"{type(exc).__name__}: {exc}")


async def _bounded(
    check: Callable[[], Awaitable[HealthCheck]], limit_seconds: float
) -> HealthCheck:
    try:
        return await asyncio.wait_for(check(), limit_seconds)
    except TimeoutError:
        return HealthCheck(ok=False, detail=f"no answer within {limit_seconds:g}s")
    except (DriverError, StateError) as exc:
        return failed(exc)
    except Exception as exc:  # a bug in a probe must not stop the watch (logged, reported)
        log.exception("zone health probe failed unexpectedly")
        return failed(exc)


def _members(instances: ClusterInstances, kind: InstanceKind) -> HealthCheck:
    every = instances.of_kind(kind)
    down = instances.down_of_kind(kind)
    plural = f"{kind.value.lower()}s"
    if not every:
        return HealthCheck(ok=False, detail=f"no {kind.value.lower()} registered")
    detail = f"{len(every) - len(down)}/{len(every)} {plural} live"
    if down:
        detail += f"; down: {', '.join(down)}"
    return HealthCheck(ok=len(down) < len(every), detail=detail)


async def _table_ingestion(pinot: PinotController, table: TableRef) -> str | None:
    """None when ``table`` ingests (or is paused: ``"paused"``); else why not."""
    pause = await pinot.pause_status(table.name_with_type)
    if pause.paused:
        return "paused"
    status = await pinot.ingestion_status(table)
    if status.state is not IngestionState.HEALTHY:
        return f"{table}: {status.state.value} {status.error}".rstrip()
    if not pause.consuming_segments:
        return f"{table}: nothing consuming"
    return None


async def probe_ingestion(pinot: PinotController, tables: Collection[str] = ()) -> HealthCheck:
    """The ``ingestion`` check over the REALTIME tables (those named in ``tables``, if any)."""
    found = await pinot.list_tables(TableType.REALTIME)
    realtime = [t for t in found if not tables or t.raw in tables]
    limit = asyncio.Semaphore(_TABLE_CONCURRENCY)

    async def one(table: TableRef) -> str | None:
        async with limit:
            return await _table_ingestion(pinot, table)

    answers = await asyncio.gather(*(one(t) for t in realtime))
    paused = sum(1 for a in answers if a == "paused")
    problems = [a for a in answers if a is not None and a != "paused"]
    if problems:
        return HealthCheck(ok=False, detail="; ".join(problems))
    return HealthCheck(
        ok=True, detail=f"{len(realtime) - paused} realtime tables consuming, {paused} paused"
    )


async def probe_zone(
    pinot: PinotController,
    postgres: Ping | None,
    *,
    tables: Collection[str] = (),
    limit_seconds: float = PROBE_TIMEOUT_SECONDS,
) -> dict[str, HealthCheck]:
    """Every check of the module docstring, concurrently; ``postgres`` None skips its check."""

    async def controller() -> HealthCheck:
        await pinot.health()
        return HealthCheck(ok=True, detail="GOOD")

    async def ping() -> HealthCheck:
        assert postgres is not None
        await postgres()
        return HealthCheck(ok=True, detail="answers")

    singles: dict[str, Callable[[], Awaitable[HealthCheck]]] = {
        CONTROLLER: controller,
        INGESTION: lambda: probe_ingestion(pinot, tables),
    }
    if postgres is not None:
        singles[POSTGRES] = ping
    names = list(singles)
    answers, members = await asyncio.gather(
        asyncio.gather(*(_bounded(singles[name], limit_seconds) for name in names)),
        _instance_checks(pinot, limit_seconds),
    )
    return dict(sorted({**dict(zip(names, answers, strict=True)), **members}.items()))


async def _instance_checks(pinot: PinotController, limit_seconds: float) -> dict[str, HealthCheck]:
    """``pinot-brokers`` and ``pinot-servers`` from one read of the instances."""
    found: list[ClusterInstances] = []

    async def read() -> HealthCheck:
        found.append(await pinot.instances())
        return HealthCheck(ok=True)

    answer = await _bounded(read, limit_seconds)
    if not found:
        return {BROKERS: answer, SERVERS: answer}
    return {
        BROKERS: _members(found[0], InstanceKind.BROKER),
        SERVERS: _members(found[0], InstanceKind.SERVER),
    }


def peer_zone_of(zone: str, primary: PrimaryRecord | None, source_zone: str = "") -> str | None:
    """The zone this one fails over with (see the module docstring); None when unknown."""
    if primary is not None and primary.zone != zone:
        return primary.zone
    if source_zone and source_zone != zone:
        return source_zone
    if primary is not None and primary.previous_zone and primary.previous_zone != zone:
        return primary.previous_zone
    return None


@dataclass
class ZoneHealthView:
    """What the watch last saw: this zone as this agent measured it, and the peer's record.

    ``own`` is the record this agent published when it leads the zone (``published``);
    otherwise its own measurement, never written, whose ``sequence`` counts this agent's
    rounds. ``peer`` is what ``<peer_zone>/health.json`` held at the last successful read.
    """

    own: ZoneHealth | None = None
    published: bool = False
    peer: ZoneHealth | None = None
    peer_zone: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "zone": self.own.describe() if self.own else None,
            "published": self.published,
            "peerZone": self.peer_zone,
            "peer": self.peer.describe() if self.peer else None,
        }


@dataclass
class HealthWatchDeps:
    """What the watch needs from the agent (narrow, so the daemon is not imported)."""

    probe: Callable[[], Awaitable[dict[str, HealthCheck]]]
    board: HealthBoard
    holder: str
    is_leader: Callable[[], bool]
    unled: Callable[[], bool]
    """The zone has no leader to publish it (a standby zone): its replicas publish by CAS."""
    peer_zone: Callable[[], str | None]
    clock: Clock
    metrics: AgentMetrics
    period: float
    on_probed: Callable[[Mapping[str, HealthCheck]], None] = lambda checks: None
    """Told every round's checks (the agent feeds its dependency view from them)."""


class ZoneHealthWatch:
    """The loop of the module docstring; :attr:`view` is what the rest of the agent reads."""

    def __init__(self, deps: HealthWatchDeps) -> None:
        self.deps = deps
        self.view = ZoneHealthView()
        self._rounds = 0
        self._exported: dict[str, set[str]] = {}
        self._peer_unreadable = False

    async def run(self) -> None:
        """One round per ``period`` until cancelled."""
        while True:
            await self.round()
            await self.deps.clock.sleep(self.deps.period)

    async def round(self) -> None:
        """Probe, publish when leading, read the peer."""
        deps = self.deps
        checks = await deps.probe()
        deps.on_probed(checks)
        self._rounds += 1
        if deps.is_leader():
            own, published = await self._publish(checks)
        elif deps.unled():
            own, published = await self._publish_unled(checks)
        else:
            own, published = self._own(checks), False
        self.view.own, self.view.published = own, published
        self._export(deps.board.zone, self.view.own)
        await self._read_peer()

    def _own(self, checks: Mapping[str, HealthCheck]) -> ZoneHealth:
        return ZoneHealth(
            zone=self.deps.board.zone,
            status=verdict(checks),
            sequence=self._rounds,
            measured_at=self.deps.clock.now(),
            holder=self.deps.holder,
            checks=dict(checks),
        )

    async def _publish(self, checks: Mapping[str, HealthCheck]) -> tuple[ZoneHealth, bool]:
        try:
            return await self.deps.board.publish(checks, self.deps.holder), True
        except (DriverError, StateError) as exc:
            log.warning("cannot publish zone %s's health: %s", self.deps.board.zone, exc)
            return self._own(checks), False

    async def _publish_unled(self, checks: Mapping[str, HealthCheck]) -> tuple[ZoneHealth, bool]:
        try:
            published = await self.deps.board.publish_unled(checks, self.deps.holder)
        except (DriverError, StateError) as exc:
            log.warning("cannot publish zone %s's health: %s", self.deps.board.zone, exc)
            published = None
        return (self._own(checks), False) if published is None else (published, True)

    async def _read_peer(self) -> None:
        zone = self.deps.peer_zone()
        if zone != self.view.peer_zone:
            if self.view.peer_zone is not None:
                self._export(self.view.peer_zone, None)
            self.view.peer_zone, self.view.peer = zone, None
        if zone is None:
            return
        try:
            self.view.peer = await self.deps.board.read(zone)
        except (DriverError, StateError) as exc:
            if not self._peer_unreadable:  # once per outage, not every round
                log.warning("cannot read zone %s's health (keeping the last one): %s", zone, exc)
            self._peer_unreadable = True
        else:
            self._peer_unreadable = False
        self._export(zone, self.view.peer)

    def _export(self, zone: str, health: ZoneHealth | None) -> None:
        """``az_agent_zone_health{zone, check}``; a check no longer reported loses its series."""
        gauge = self.deps.metrics.zone_health
        checks = health.checks if health else {}
        for gone in self._exported.get(zone, set()) - set(checks):
            gauge.remove(zone, gone)
        for name, check in checks.items():
            gauge.labels(zone=zone, check=name).set(1 if check.ok else 0)
        self._exported[zone] = set(checks)
