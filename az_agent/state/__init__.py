"""What must survive a crash: the lease, the primary record, the fenced commit log,
checkpoints and the catalog.

Everything lives in the bucket under ``<zone>/`` (the pair's primary record under
``primary/``) and is reached only through
:class:`~az_agent.drivers.storage.base.ObjectStore` (create-only and compare-and-swap writes).
``state`` imports nothing from ``az_agent.agent``.

Lease (``lease.py``, records in ``lease_record.py``) -- ``<zone>/lease.json``::

    settings = LeaseSettings(ttl_seconds=15, renew_deadline_seconds=10, retry_period_seconds=2)
    keeper = LeaseKeeper(store, zone, new_holder_id("az1-agent"), settings, clock=SystemClock())
    keeper.is_leader -> bool        # live: last renewal started < renew deadline ago
    keeper.epoch -> int | None      # the fencing token held (or last held)
    await keeper.tick() -> bool     # one round: renew, or acquire absent/released/expired
    await keeper.run()              # tick every retry period until cancelled; releases on exit
    await keeper.wait_leader(); await keeper.wait_not_leader(); keeper.add_listener(cb)
    await keeper.observe() -> LeaseObservation   # read only; .is_expired / .is_live
    await keeper.take_over(force=False) -> int   # LeaseHeld while another holder is live
    await keeper.release(LeaseState.RELEASED | LeaseState.PAUSED) -> bool
    keeper.status() -> LeaseStatus

  Expiry is "version unchanged for the record's ttl on my monotonic clock", never a wall-clock
  comparison. A ``paused`` lease is only taken by ``take_over``; ``released`` by anyone. Epochs
  only grow and stay above every epoch in the zone's log. Holder ids must be unique per
  process incarnation (``new_holder_id``).

Primary record (``primary.py``) -- ``primary/<group>.json``, the pair's leader lock::

    primary = PrimaryLock(store, group="default", clock=clock)
    await primary.read() -> PrimaryObservation      # .record / .version (None, None if absent)
    await primary.ensure(zone) -> PrimaryRecord     # create-only if absent; else unchanged
    await primary.claim(source="az1", zone="az2", operation_id=op,
                        expected=None) -> PrimaryRecord   # CAS {az1, t} -> {az2, t + 1}
    # PrimaryTaken(zone, term): another zone holds it, or the CAS lost (never retried)

  ``term`` only grows (one per successful claim) and is the pair-wide fencing token: writers
  carry it (``LogWriter(..., term=record.term)``) and ``(term, epoch)`` orders the log.

Commit log (``log.py``, entry models in ``entries.py``) -- ``<zone>/log/<seq:020d>.json``::

    writer = LogWriter(store, zone, epoch, holder_id, clock=clock, term=record.term,
                       guard=lambda: keeper.is_leader and keeper.epoch == epoch)
    await writer.write_fence(reason="...") -> LogEntry   # first, once per (term, epoch)
    await writer.append(SegmentPayload(...)) -> LogEntry # Fenced / NotLeader / SplitBrain
    await find_tail(store, zone) -> int; await last_entry(store, zone) -> LogEntry | None
    read_entries(store, zone, after) -> AsyncIterator[LogEntry]

  Fencing: an entry whose ``(term, epoch)`` (``LogEntry.order``) is above the writer's
  (``writer.order``) fences it for good; a higher term wins whatever the epochs say. Along one
  log ``(term, epoch)`` never decreases; entries carry term 0 when written without one.

  Payloads: ``SegmentPayload``, ``DumpPayload``, ``DumpDeletedPayload``,
  ``TableConfigPayload``, ``SchemaPayload``, ``PausedPayload``, ``FencePayload``,
  ``ResumedPayload``, ``SegmentDeletedPayload`` (Pinot deleted it: not live from then on),
  ``SegmentsPurgedPayload`` (retention forgets deleted segments). Write the data object first,
  then append its entry.

Zone health (``health.py``) -- ``<zone>/health.json``, published by the zone's leader::

    board = HealthBoard(store, zone, clock=clock)
    await board.publish({"pinot": HealthCheck(ok=True)}, holder) -> ZoneHealth  # sequence + 1
    await board.read(other_zone) -> ZoneHealth | None   # .status healthy|unhealthy|unknown

Catalog, checkpoints, sweep (``catalog.py``, ``backups.py``, ``columns.py``, ``checkpoint.py``,
``sweep.py``; a checkpoint's segments stay in packed columns, records are built on demand)::

    catalog = await load_catalog(store, zone)     # newest valid checkpoint + later entries
    await apply_committed(store, catalog, entry)  # after each append of this agent's writer
    await refresh_catalog(store, catalog)         # follow another writer (warm standby)
    catalog.segments(as_of=None, table=None) -> list[SegmentRecord]  # numbers are properties
    catalog.segment(table, name, as_of=None); catalog.tables(); catalog.segment_count
    catalog.dumps(database, as_of=None); catalog.newest_dump(database, as_of=None)
    catalog.table_configs(as_of=None); catalog.schemas(as_of=None); catalog.databases()
    catalog.last_seq, catalog.term, catalog.epoch, catalog.last_paused, catalog.last_fence
    await write_checkpoint(store, catalog); await prune_checkpoints(store, zone, keep=3)
    await truncate_log(store, zone)   # entries older than the oldest checkpoint kept
    await sweep_orphans(store, zone, catalog, grace, clock) -> list[ObjectInfo]

  "As of T": records whose log entry was committed at or before T.

Typical use::

    # own zone: keeper.run() in the agent's TaskGroup; once keeper.wait_leader() returns:
    epoch = keeper.epoch; catalog = await load_catalog(store, zone)
    writer = LogWriter(store, zone, epoch, keeper.holder_id, guard=...)
    await apply_committed(store, catalog, await writer.write_fence())
    # ...then per backup: upload the object, entry = await writer.append(payload),
    # await apply_committed(store, catalog, entry); stop on Fenced / NotLeader.
    # activation of a source zone: commit, then fence whoever may still write there
    record = await PrimaryLock(store).claim(source="az1", zone=zone, operation_id=op)
    source = LeaseKeeper(store, "az1", keeper.holder_id, settings)
    epoch = await source.take_over(force=...)      # LeaseHeld while live and not forced
    await LogWriter(store, "az1", epoch, keeper.holder_id,
                    term=record.term).write_fence(reason="activation")

Errors (``errors.py``): ``StateError`` > ``LeaseHeld``, ``LeaseCorrupted``, ``NotLeader``,
``Fenced``, ``LogCorrupted`` > ``SplitBrain``, ``CheckpointInvalid``, ``PrimaryTaken``,
``PrimaryCorrupted``. Storage errors
(``Unavailable`` ...) pass through unchanged.
"""

from __future__ import annotations

from az_agent.state.backups import ConfigRecord, DumpRecord, SegmentDeletion, SegmentRecord
from az_agent.state.catalog import Catalog, CatalogSnapshot, apply_committed, refresh_catalog
from az_agent.state.checkpoint import (
    load_catalog,
    prune_checkpoints,
    read_checkpoint,
    truncate_log,
    write_checkpoint,
)
from az_agent.state.clock import Clock, SystemClock
from az_agent.state.entries import (
    DumpDeletedPayload,
    DumpPayload,
    FencePayload,
    LogEntry,
    PausedPayload,
    Payload,
    ResumedPayload,
    SchemaPayload,
    SegmentDeletedPayload,
    SegmentPayload,
    SegmentsPurgedPayload,
    TableConfigPayload,
)
from az_agent.state.errors import (
    CheckpointInvalid,
    Fenced,
    LeaseCorrupted,
    LeaseHeld,
    LogCorrupted,
    NotLeader,
    PrimaryCorrupted,
    PrimaryTaken,
    SplitBrain,
    StateError,
)
from az_agent.state.health import (
    HealthBoard,
    HealthCheck,
    HealthCorrupted,
    HealthStatus,
    ZoneHealth,
)
from az_agent.state.lease import LeaseKeeper, new_holder_id
from az_agent.state.lease_record import (
    LeaseObservation,
    LeaseRecord,
    LeaseSettings,
    LeaseState,
    LeaseStatus,
)
from az_agent.state.log import LogWriter, find_tail, last_entry, read_entries, read_entry
from az_agent.state.primary import (
    DEFAULT_GROUP,
    PrimaryLock,
    PrimaryObservation,
    PrimaryRecord,
    highest_term,
)
from az_agent.state.sweep import sweep_orphans

LeaderElector = LeaseKeeper
"""The same class under the name leader-election literature uses."""

__all__ = [
    "DEFAULT_GROUP",
    "Catalog",
    "CatalogSnapshot",
    "CheckpointInvalid",
    "Clock",
    "ConfigRecord",
    "DumpDeletedPayload",
    "DumpPayload",
    "DumpRecord",
    "FencePayload",
    "Fenced",
    "HealthBoard",
    "HealthCheck",
    "HealthCorrupted",
    "HealthStatus",
    "LeaderElector",
    "LeaseCorrupted",
    "LeaseHeld",
    "LeaseKeeper",
    "LeaseObservation",
    "LeaseRecord",
    "LeaseSettings",
    "LeaseState",
    "LeaseStatus",
    "LogCorrupted",
    "LogEntry",
    "LogWriter",
    "NotLeader",
    "PausedPayload",
    "Payload",
    "PrimaryCorrupted",
    "PrimaryLock",
    "PrimaryObservation",
    "PrimaryRecord",
    "PrimaryTaken",
    "ResumedPayload",
    "SchemaPayload",
    "SegmentDeletedPayload",
    "SegmentDeletion",
    "SegmentPayload",
    "SegmentRecord",
    "SegmentsPurgedPayload",
    "SplitBrain",
    "StateError",
    "SystemClock",
    "TableConfigPayload",
    "ZoneHealth",
    "apply_committed",
    "find_tail",
    "highest_term",
    "last_entry",
    "load_catalog",
    "new_holder_id",
    "prune_checkpoints",
    "read_checkpoint",
    "read_entries",
    "read_entry",
    "refresh_catalog",
    "sweep_orphans",
    "truncate_log",
    "write_checkpoint",
]
