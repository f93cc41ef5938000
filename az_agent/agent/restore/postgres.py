"""Which dump of each database an activation restores, and the restores themselves.

A warm standby keeps each database's newest dump restored in a shadow database
(:mod:`az_agent.agent.standby.shadow`); a database whose shadow holds the planned dump is
swapped in by renaming instead of restored.

The choice is made from a catalog alone (the log is the only truth about what is backed up),
and the catalog may be another zone's: the agent activating zone B restores from zone A's
``load_catalog(store, "A")``. "At or before ``latest_time``" compares with the time each dump's
log entry was committed, the instant it became part of the backup.

Also home of what the backup loop shares with restores: the metric labels (``KIND``,
:func:`failure_reason`) and the JSON shape of a dump (:func:`describe_dump`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.observability.reports import KIND, describe_dump, failure_reason
from az_agent.drivers.errors import (
    CorruptObject,
    DriverError,
)
from az_agent.drivers.postgres.base import PostgresDumper, RestoreResult
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import Catalog, DumpRecord

log = logging.getLogger(__name__)


class RestoreError(Exception):
    """Base of the errors of PostgreSQL restores."""


class NoBackup(RestoreError):
    """No dump of some database was committed at or before the requested time (HTTP 404)."""

    def __init__(self, zone: str, databases: Sequence[str], latest_time: datetime | None) -> None:
        when = "" if latest_time is None else f" committed at or before {latest_time.isoformat()}"
        super().__init__(
            f"zone {zone!r} holds no dump of {', '.join(repr(db) for db in databases)}{when}"
        )
        self.zone = zone
        self.databases = list(databases)
        self.latest_time = latest_time


class RestoreFailed(RestoreError):
    """The restore of ``database`` failed; the driver left that database as it was.

    ``corrupt`` says the stored dump did not match the log's checksum or size (retrying the
    same dump cannot help). The driver's error is the ``__cause__``.
    """

    def __init__(self, database: str, record: DumpRecord, cause: Exception) -> None:
        super().__init__(
            f"restore of database {database!r} from {record.key} (log entry {record.seq}) "
            f"failed, the database is unchanged: {cause}"
        )
        self.database = database
        self.record = record
        self.corrupt = isinstance(cause, CorruptObject)


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """The dump chosen for each database, in configuration order."""

    zone: str
    latest_time: datetime | None
    dumps: tuple[DumpRecord, ...]
    shadows: frozenset[str] = frozenset()
    """Databases whose shadow held the planned dump when :func:`find_shadows` looked: they
    would be swapped in (:func:`restore_databases` checks again when it gets there)."""

    @property
    def databases(self) -> list[str]:
        return [record.database for record in self.dumps]

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for the operation's status and dryRun; ``via`` says per database
        whether its shadow is swapped in or its dump restored."""
        return {
            "zone": self.zone,
            "latestTime": None if self.latest_time is None else self.latest_time.isoformat(),
            "dumps": {record.database: describe_dump(record) for record in self.dumps},
            "via": {
                record.database: "shadow" if record.database in self.shadows else "restore"
                for record in self.dumps
            },
        }


@dataclass(frozen=True, slots=True)
class RestoreProgress:
    """One step of :func:`restore_databases`: a database started (``result`` None) or done."""

    database: str
    index: int
    total: int
    phase: Literal["restoring", "restored", "swapped"]
    record: DumpRecord
    result: RestoreResult | None = None


ProgressCallback = Callable[[RestoreProgress], Awaitable[None] | None]


def plan_restore(
    catalog: Catalog, databases: Sequence[str], latest_time: datetime | None
) -> RestorePlan:
    """For each database, the newest dump committed at or before ``latest_time`` (None: the
    newest). Raises ``NoBackup`` naming every database without one."""
    if latest_time is not None and latest_time.utcoffset() is None:
        raise ValueError(f"latest_time must carry a time zone: {latest_time.isoformat()}")
    chosen: list[DumpRecord] = []
    missing: list[str] = []
    for db in databases:
        record = catalog.newest_dump(db, as_of=latest_time)
        if record is None:
            missing.append(db)
        else:
            chosen.append(record)
    if missing:
        raise NoBackup(catalog.zone, missing, latest_time)
    plan = RestorePlan(catalog.zone, latest_time, tuple(chosen))
    log.info(
        "restore plan from zone %s as of %s: %s",
        catalog.zone,
        "now" if latest_time is None else latest_time.isoformat(),
        ", ".join(f"{r.database} <- entry {r.seq} ({r.started_at.isoformat()})" for r in chosen),
    )
    return plan


async def find_shadows(plan: RestorePlan, dumper: PostgresDumper) -> RestorePlan:
    """``plan`` with :attr:`RestorePlan.shadows`: the databases whose shadow holds the planned
    dump. Informative only (for dryRun and the operation's status); a server that cannot be
    asked counts as no shadows."""
    shadows: set[str] = set()
    for record in plan.dumps:
        try:
            label = await dumper.shadow(record.database)
        except DriverError as exc:
            log.warning("cannot tell whether %s has a shadow: %s", record.database, exc)
            continue
        if label is not None and label.holds(record.key, record.sha256):
            shadows.add(record.database)
    return replace(plan, shadows=frozenset(shadows))


async def restore_databases(
    plan: RestorePlan,
    dumper: PostgresDumper,
    store: ObjectStore,
    progress_callback: ProgressCallback | None = None,
    *,
    metrics: AgentMetrics | None = None,
    swap_tag: str | None = None,
) -> list[RestoreResult]:
    """Restore each planned database in turn, checking bytes against the log's record.

    With ``swap_tag`` (the operation's id), a database whose shadow holds the planned dump is
    swapped in instead (``RestoreResult.shadow``), else restored. Stops at the first failure
    with ``RestoreFailed`` naming the database: that one is unchanged (the driver restores into
    a scratch database, or swaps the shadow, by renames in one transaction), those before it
    are done, those after it untouched. Running the same plan again is safe, also after a
    restart in the middle of a swap:

    - before the renames commit: the live database is intact (perhaps closed to new
      connections) and the shadow still holds the dump, so the swap is simply done again;
    - after they commit: the live database is the former shadow carrying ``swap_tag`` and the
      dump's label, which the driver recognises as done (it only drops the old copy it had
      set aside, if still there); no other operation's tag is trusted, so a database changed
      since an earlier activation is always replaced;
    - a shadow that no longer holds the planned dump (or none): the dump is restored.
    """
    results: list[RestoreResult] = []
    total = len(plan.dumps)
    for index, record in enumerate(plan.dumps):
        db = record.database
        await _report(progress_callback, RestoreProgress(db, index, total, "restoring", record))
        try:
            result = None
            if swap_tag is not None:
                result = await dumper.swap_in_shadow(db, record.key, record.sha256, swap_tag)
            if result is None:
                result = await dumper.restore(db, store, record.key, record.sha256, record.size)
        except Exception as exc:
            if metrics is not None:
                metrics.restore_failures.labels(kind=KIND, reason=failure_reason(exc)).inc()
            log.error("restore of %s from %s failed: %s", db, record.key, exc)
            raise RestoreFailed(db, record, exc) from exc
        results.append(result)
        done: Literal["restored", "swapped"] = "swapped" if result.shadow else "restored"
        await _report(progress_callback, RestoreProgress(db, index, total, done, record, result))
    return results


async def _report(callback: ProgressCallback | None, progress: RestoreProgress) -> None:
    if callback is None:
        return
    outcome = callback(progress)
    if inspect.isawaitable(outcome):
        await outcome
