"""Cold standby (``coldStandby``): nothing runs in the zone but the agent until it activates.

The zone's workloads are named in ``coldStandby.workloads`` (kind, name, optional replicas) or
by ``coldStandby.selector`` (or both: the named ones first), all in ``coldStandby.namespace``
("" = the agent's own). :class:`ColdStandby` does three things with them:

* while the zone leads, it records their replicas in ``<zone>/workloads.json``
  (:mod:`az_agent.state.workloads`) when the session starts and whenever they change (checked
  every :data:`RECORD_EVERY_SECONDS`), never a 0 over a positive count, so a zone scaled down
  remembers its size;
* an activation's ``scale-up`` phase scales each workload to its configured replicas, else the
  recorded ones, else 1, and waits until every one reports that many ready replicas (polled
  with backoff, at most ``readyTimeoutSeconds``), reporting progress for ``/status``. It never
  scales a workload down: one already larger (an operator was quicker) is left as it is;
* a pause's ``scale-down`` phase (``scaleDownOnPause``) records the sizes once more and scales
  every workload to 0.

Scaling goes through the ``scale`` subresource (:mod:`az_agent.drivers.kubernetes.workloads`),
so the agent's Role needs only ``list`` on the kinds and ``get``/``patch`` on their ``/scale``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from az_agent.agent.backoff import backoff_delay
from az_agent.agent.config import ColdStandbySettings, ConfigError
from az_agent.agent.leadership.session import LeaderSession
from az_agent.drivers.errors import DriverError, NotFound, Unavailable
from az_agent.drivers.kubernetes.base import Workload, WorkloadKind, WorkloadScaler
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import Clock
from az_agent.state.workloads import (
    WorkloadsCorrupted,
    ZoneWorkloads,
    observe,
    read_workloads,
    write_workloads,
)

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
RECORD_EVERY_SECONDS = 300.0
"""How often a leading zone looks whether its workloads' sizes changed."""
DEFAULT_REPLICAS = 1
"""Replicas of a workload neither configured nor ever recorded."""
POLL_FIRST_SECONDS = 0.5
POLL_MAX_SECONDS = 5.0

Source = Literal["configured", "recorded", "default"]
Progress = Callable[[str], Awaitable[None]]


def resolve_namespace(
    settings: ColdStandbySettings, *, fallback: str = "", path: Path = SERVICE_ACCOUNT_NAMESPACE
) -> str:
    """``coldStandby.namespace``, else the pod's own (its service account's namespace file),
    else ``fallback`` (``global.namespace``); ``ConfigError`` naming the key when none is known.
    Reads a file: call it off the event loop."""
    if settings.namespace:
        return settings.namespace
    try:
        own = path.read_text(encoding="utf-8").strip()
    except OSError:
        own = ""
    if own or fallback:
        return own or fallback
    raise ConfigError(
        "az-service.config.coldStandby.namespace: empty, and the agent's own namespace is "
        f"unknown (no {path}, no global.namespace); name the namespace of the workloads"
    )


@dataclass(frozen=True, slots=True)
class Target:
    """One workload as the activation found it, and the size it scales it to."""

    workload: Workload
    replicas: int
    source: Source

    @property
    def name(self) -> str:
        return self.workload.name

    def label(self) -> str:
        return f"{self.workload.kind} {self.workload.namespace}/{self.workload.name}"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": str(self.workload.kind),
            "name": self.workload.name,
            "namespace": self.workload.namespace,
            "replicas": self.workload.replicas,
            "readyReplicas": self.workload.ready_replicas,
            "target": self.replicas,
            "from": self.source,
            "scale": self.workload.replicas < self.replicas,
        }


class WorkloadsNotReady(TimeoutError):
    """The workloads did not report ready within ``readyTimeoutSeconds``."""


class ColdStandby:
    """The cold-standby workloads of one zone; implements ``leadership.loops.ColdStart``."""

    def __init__(
        self,
        scaler: WorkloadScaler,
        settings: ColdStandbySettings,
        namespace: str,
        *,
        store: ObjectStore,
        zone: str,
        clock: Clock,
        record_every: float = RECORD_EVERY_SECONDS,
        poll_first: float = POLL_FIRST_SECONDS,
        poll_max: float = POLL_MAX_SECONDS,
    ) -> None:
        self.scaler = scaler
        self.settings = settings
        self.namespace = namespace
        self._store = store
        self._zone = zone
        self._clock = clock
        self._record_every = record_every
        self._poll_first = poll_first
        self._poll_max = poll_max

    # ------------------------------------------------------------ what the zone runs

    async def workloads(self) -> list[Workload]:
        """The zone's workloads as the API server has them: the named ones in configured order
        (``NotFound`` naming one that does not exist), then the selector's, each once."""
        ns, named = self.namespace, self.settings.workloads
        found: list[Workload] = []
        if named:
            present = {(w.kind, w.name): w for w in await self.scaler.list_workloads(ns)}
            for ref in named:
                workload = present.get((WorkloadKind(ref.kind), ref.name))
                if workload is None:
                    raise NotFound(f"{ref.kind} {ns}/{ref.name} (coldStandby.workloads) not found")
                found.append(workload)
        if self.settings.selector:
            seen = {(w.kind, w.name) for w in found}
            matched = await self.scaler.list_workloads(ns, self.settings.selector)
            found.extend(w for w in matched if (w.kind, w.name) not in seen)
        if not found:
            raise NotFound(
                f"no Deployment or StatefulSet in namespace {ns} matches coldStandby.selector "
                f"{self.settings.selector!r}"
            )
        return found

    def _configured(self, workload: Workload) -> int | None:
        for ref in self.settings.workloads:
            if (WorkloadKind(ref.kind), ref.name) == (workload.kind, workload.name):
                return ref.replicas
        return None

    def targets(self, workloads: list[Workload], recorded: ZoneWorkloads | None) -> list[Target]:
        """Each workload's size: configured, else recorded, else :data:`DEFAULT_REPLICAS`."""
        targets = []
        for workload in workloads:
            configured = self._configured(workload)
            saved = None
            if recorded is not None:
                saved = recorded.replicas(workload.namespace, workload.kind, workload.name)
            if configured is not None:
                targets.append(Target(workload, configured, "configured"))
            elif saved is not None:
                targets.append(Target(workload, saved, "recorded"))
            else:
                targets.append(Target(workload, DEFAULT_REPLICAS, "default"))
        return targets

    async def _recorded(self) -> ZoneWorkloads | None:
        try:
            return await read_workloads(self._store, self._zone)
        except WorkloadsCorrupted as exc:
            log.warning("ignoring an unreadable workloads record: %s", exc)
            return None

    # ------------------------------------------------------------ recording

    async def record(self, epoch: int, seen: list[Workload] | None = None) -> ZoneWorkloads | None:
        """Write the workloads' sizes when they changed; what was written, else None."""
        workloads = seen if seen is not None else await self.workloads()
        updated = observe(
            await self._recorded(),
            workloads,
            zone=self._zone,
            epoch=epoch,
            now=self._clock.now(),
        )
        if updated is not None:
            await write_workloads(self._store, updated)
            sizes = ", ".join(f"{w.kind} {w.name}: {w.replicas}" for w in updated.workloads)
            log.info("recorded the replicas of zone %s's workloads: %s", self._zone, sizes)
        return updated

    async def run(self, session: LeaderSession) -> None:
        """While ``session`` leads: record at once, then every ``record_every`` seconds."""
        while session.is_usable:
            try:
                await self.record(session.epoch)
            except DriverError as exc:
                log.warning("could not record the workloads' replicas, retrying later: %s", exc)
            await self._clock.sleep(self._record_every)

    # ------------------------------------------------------------ activation and pause

    async def plan(self) -> dict[str, Any]:
        try:
            targets = self.targets(await self.workloads(), await self._recorded())
        except DriverError as exc:
            return {"namespace": self.namespace, "workloads": None, "error": str(exc)}
        return {"namespace": self.namespace, "workloads": [t.describe() for t in targets]}

    async def ping(self) -> None:
        await self.workloads()

    async def scale_up(self, progress: Progress) -> str:
        """Scale each workload up to its target and wait until all report it ready."""
        targets = self.targets(await self.workloads(), await self._recorded())
        for target in targets:
            if target.workload.replicas < target.replicas:
                await self.scaler.scale(
                    self.namespace, target.workload.kind, target.name, target.replicas
                )
        # What the listing said before scaling: a workload scaled just now has none ready yet.
        seen = {t.label(): min(t.workload.ready_replicas, t.workload.replicas) for t in targets}
        await progress(_waiting(targets, seen))
        ready = await self._wait_ready(targets, progress)
        return f"{len(targets)} workloads ready: " + ", ".join(
            f"{t.name} {ready[t.label()]}/{t.replicas} ({t.source})" for t in targets
        )

    async def _wait_ready(self, targets: list[Target], progress: Progress) -> dict[str, int]:
        """Poll until each target has ``readyReplicas >= replicas``; its ready counts.

        An API server that does not answer is waited for like a workload that is not ready:
        both end in :class:`WorkloadsNotReady` at the deadline, which names what was missing.
        """
        timeout = self.settings.ready_timeout_seconds
        deadline = self._clock.monotonic() + timeout
        ready: dict[str, int] = {}
        said = ""
        attempt = 0
        while True:
            trouble = ""
            try:
                seen = {_label(w): w for w in await self.workloads()}
                # A selector's workload deleted meanwhile stays 0 ready: the deadline names it.
                ready = {
                    t.label(): seen[t.label()].ready_replicas if t.label() in seen else 0
                    for t in targets
                }
            except Unavailable as exc:
                trouble = f"; Kubernetes API: {exc}"
            pending = [t for t in targets if ready.get(t.label(), 0) < t.replicas]
            if not pending:
                return ready
            text = _waiting(targets, ready) + trouble
            if text != said:
                said = text
                await progress(text)
            left = deadline - self._clock.monotonic()
            if left <= 0:
                missing = ", ".join(
                    f"{t.label()} {ready.get(t.label(), 0)}/{t.replicas} ready" for t in pending
                )
                raise WorkloadsNotReady(
                    f"workloads not ready after {timeout:g}s: {missing}{trouble}"
                )
            attempt += 1
            delay = backoff_delay(attempt, self._poll_first, self._poll_max, jitter=False)
            await self._clock.sleep(min(delay, left))

    async def scale_down(self, epoch: int) -> str:
        """Record the sizes (a 0 never overwrites one), then scale every workload to 0."""
        workloads = await self.workloads()
        await self.record(epoch, workloads)
        scaled = []
        for workload in workloads:
            if workload.replicas > 0:
                await self.scaler.scale(self.namespace, workload.kind, workload.name, 0)
                scaled.append(f"{workload.name} (was {workload.replicas})")
        if not scaled:
            return f"{len(workloads)} workloads already at 0"
        return f"scaled to 0: {', '.join(scaled)}"


def _label(workload: Workload) -> str:
    return f"{workload.kind} {workload.namespace}/{workload.name}"


def _waiting(targets: list[Target], ready: dict[str, int]) -> str:
    """``2/3 workloads ready: pinot-server 1/3`` (the ones still waited for named)."""
    pending = [t for t in targets if ready.get(t.label(), 0) < t.replicas]
    done = len(targets) - len(pending)
    waiting = ", ".join(f"{t.name} {ready.get(t.label(), 0)}/{t.replicas}" for t in pending)
    return f"{done}/{len(targets)} workloads ready" + (f": {waiting}" if waiting else "")
