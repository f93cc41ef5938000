"""Pinot table configs and schemas recreated on activation (saved by ``backup.tables``).

Restoring follows §8 of the controller reference: schemas first, then table configs. Creating a
REALTIME table starts one sequence-0 consuming segment per partition (§11.4), and pausing it
commits them. Those segments are not part of the backup: left in place, their rows would be
counted twice, and in a partition whose newest restored segment is also sequence 0 the
controller could resume after the wrong one. So a REALTIME table that will receive segments is
paused right after its creation (an existing one before the restore), and once flushed, the
segments the creation made are deleted from a table this restore created. That table is known
by its pause comment, which survives a crashed activation. After rehydration,
:func:`resume_after_restore` resumes with ``lastConsumed``: each partition continues from the
end offset of its newest restored segment.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import PurePosixPath

from az_agent.drivers.errors import CorruptObject, NotFound
from az_agent.drivers.pinot.base import ConsumeFrom, PinotController
from az_agent.drivers.pinot.errors import Conflict
from az_agent.drivers.pinot.models import JsonObject, TableRef, TableType, table_type_of
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import Catalog, ConfigRecord, SegmentRecord

log = logging.getLogger(__name__)

CREATED_COMMENT = "az-agent: table created by a restore, paused until its segments are restored"
PAUSED_COMMENT = "az-agent: paused while segments are restored"
RESUMED_COMMENT = "az-agent: segments restored"
_DIGEST_NAME = re.compile(r"[0-9a-f]{64}\.json")


def record_table(record: SegmentRecord) -> TableRef:
    """The physical table of a backed-up segment (stored by typed or raw name)."""
    return stored_table_ref(record.table, record.table_type)


@functools.lru_cache(maxsize=1024)
def stored_table_ref(table: str, table_type: str) -> TableRef:
    """The physical table of a name and type as the catalog stores them; memoized: asked once
    per segment of every plan, for a handful of distinct tables."""
    return TableRef.parse(table, TableType(table_type))


# -- restoring (activation) -------------------------------------------------------------------


async def load_document(store: ObjectStore, record: ConfigRecord) -> JsonObject:
    """The config or schema ``record`` saved, verified against its digest.

    Documents are content-addressed (``.../<name>/<sha256>.json``, never rewritten), so other
    bytes there mean damage or tampering: ``CorruptObject``, never a silently different
    version. Entries written before content addressing name ``.../<name>.json``, which every
    later change of that document overwrote; for those the version stored now is the only one
    left, and it is used with a warning, as those agents did.
    """
    data, _ = await store.get(record.key)
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.sha256:
        if _is_content_addressed(record):
            raise CorruptObject(
                f"{record.key}: SHA-256 {digest}, but entry {record.seq} recorded "
                f"{record.sha256}; not restoring a document the backup did not save"
            )
        log.warning(
            "%s %s changed after entry %d (saved before content addressing); restoring the "
            "version stored now",
            record.kind,
            record.name,
            record.seq,
        )
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise CorruptObject(f"{record.key}: not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise CorruptObject(f"{record.key}: not a JSON object")
    return body


def _is_content_addressed(record: ConfigRecord) -> bool:
    """Whether ``record``'s key names its digest (the layout of ``backup.tables`` today)."""
    return _DIGEST_NAME.fullmatch(PurePosixPath(record.key).name) is not None


async def restore_table_configs(
    pinot: PinotController,
    store: ObjectStore,
    catalog: Catalog,
    as_of: datetime | None = None,
    *,
    flush_timeout_seconds: float = 120.0,
    skip_empty_realtime: bool = False,
) -> list[TableRef]:
    """Create the schemas and tables of the backup (as of ``as_of``) that Pinot lacks and get
    every REALTIME table that will receive segments paused, flushed and free of segments the
    restore did not bring (see the module docstring). The tables created by this call.

    ``skip_empty_realtime`` (a warm standby following the primary) leaves out REALTIME tables
    no segment is backed up for yet: created now they would consume, so they wait for a later
    call that finds segments for them (or for the activation, which creates them consuming).
    """
    existing = set(await pinot.list_tables())
    schemas = [
        (name, record)
        for name, record in sorted(catalog.schemas(as_of).items())
        if not await _has_schema(pinot, name)
    ]
    receiving = _receiving(catalog, as_of)
    tables: list[tuple[TableRef, ConfigRecord]] = []
    for name, record in sorted(catalog.table_configs(as_of).items()):
        table = _typed(name)
        if table is None or table in existing:
            continue
        if skip_empty_realtime and table.type is TableType.REALTIME and table not in receiving:
            continue
        tables.append((table, record))
    documents = await _load_documents(store, [r for _, r in schemas] + [r for _, r in tables])
    for name, record in schemas:
        await _restore_schema(pinot, name, record, documents[record.key])
    created: list[TableRef] = []
    for table, record in tables:
        if not await _create_table(pinot, record, table, documents[record.key]):
            continue
        created.append(table)
        if table.type is TableType.REALTIME and table in receiving:
            await pinot.pause_consumption(table.name_with_type, comment=CREATED_COMMENT)
    realtime = sorted(t for t in receiving if t.type is TableType.REALTIME)
    present = set(await pinot.list_tables(TableType.REALTIME))
    ours = await _pause_for_restore(pinot, [t for t in realtime if t in present])
    await wait_flushed(pinot, [t for t in realtime if t in present], flush_timeout_seconds)
    for table in ours:
        names = {
            r.name
            for source in receiving[table]
            for r in catalog.segments(as_of, table=source)
            if record_table(r) == table
        }
        await _remove_strays(pinot, table, names)
    return created


def _receiving(catalog: Catalog, as_of: datetime | None) -> dict[TableRef, list[str]]:
    """The Pinot tables that get segments as of ``as_of``, each with the catalog's tables
    they come from: one table's records at a time, not the whole catalog's."""
    receiving: dict[TableRef, list[str]] = {}
    for source in catalog.tables():
        for table in {record_table(r) for r in catalog.segments(as_of, table=source)}:
            receiving.setdefault(table, []).append(source)
    return receiving


async def _has_schema(pinot: PinotController, name: str) -> bool:
    try:
        await pinot.schema(name)
    except NotFound:
        return False
    return True


async def _load_documents(store: ObjectStore, records: list[ConfigRecord]) -> dict[str, JsonObject]:
    """The documents of ``records`` (what Pinot lacks: none on a warm standby's usual call),
    read from the bucket together rather than one round trip each; all answer before the
    first failure is raised."""
    loaded = await asyncio.gather(
        *(load_document(store, record) for record in records), return_exceptions=True
    )
    for result in loaded:
        if isinstance(result, BaseException):
            raise result
    return {
        record.key: document
        for record, document in zip(records, loaded, strict=True)
        if not isinstance(document, BaseException)
    }


async def _restore_schema(
    pinot: PinotController, name: str, record: ConfigRecord, schema: JsonObject
) -> None:
    try:
        await pinot.create_schema(schema, override=False)
    except Conflict:
        return  # created meanwhile
    log.info("restored schema %s (entry %d)", name, record.seq)


async def _create_table(
    pinot: PinotController, record: ConfigRecord, table: TableRef, config: JsonObject
) -> bool:
    try:
        await pinot.create_table(config)
    except Conflict:
        return False  # created meanwhile
    log.info("created table %s from its saved config (entry %d)", table, record.seq)
    return True


async def _pause_for_restore(pinot: PinotController, tables: list[TableRef]) -> list[TableRef]:
    """Pause ``tables``; those a restore created (by their pause comment) are returned."""
    ours: list[TableRef] = []
    for table in tables:
        status = await pinot.pause_status(table.name_with_type)
        if status.paused and status.comment == CREATED_COMMENT:
            ours.append(table)
        else:
            await pinot.pause_consumption(table.name_with_type, comment=PAUSED_COMMENT)
    return ours


async def wait_flushed(
    pinot: PinotController, tables: list[TableRef], within: float, poll: float = 0.2
) -> None:
    """Wait until every table in ``tables`` is paused with no consuming segment left.

    Polled at 5 ms first, doubling up to ``poll``: a table just created commits its empty
    consuming segments at once, and a first wait of ``poll`` cost every activation that much
    (20 ms first still cost about 15 ms more than the commit took on the emulator).
    """

    async def flushed() -> None:
        pending, pause = list(tables), min(0.005, poll)
        while pending:
            statuses = [await pinot.pause_status(t.name_with_type) for t in pending]
            pending = [t for t, s in zip(pending, statuses, strict=True) if not s.is_flushed]
            if pending:
                await asyncio.sleep(pause)
                pause = min(pause * 2, poll)

    try:
        await asyncio.wait_for(flushed(), within)
    except TimeoutError as exc:
        raise TimeoutError(
            f"consuming segments of {', '.join(map(str, tables))} not committed in {within:.0f} s"
        ) from exc


async def _remove_strays(pinot: PinotController, table: TableRef, backup: set[str]) -> None:
    # Names only (about 40 bytes a segment, not 600 of ZK metadata): every activation of a
    # warm standby comes here with every segment it followed.
    strays = [name for name in await pinot.segment_names(table) if name not in backup]
    if not strays:
        return
    for name in strays:
        await pinot.delete_segment(table, name)
    log.info("table %s: deleted %d segments its creation committed", table, len(strays))


def _typed(name: str) -> TableRef | None:
    try:
        return TableRef.parse(name)
    except ValueError:
        log.warning("saved table config %r has no type suffix; not restored", name)
        return None


def _as_realtime(name: str) -> TableRef | None:
    kind = table_type_of(name)
    if kind is TableType.OFFLINE:
        return None
    return TableRef.parse(name, TableType.REALTIME)


async def resume_after_restore(pinot: PinotController, tables: Iterable[str]) -> list[TableRef]:
    """Resume the paused REALTIME tables among ``tables`` (raw or typed names) from the end
    offset of each partition's newest segment (``lastConsumed``); the tables resumed."""
    present = set(await pinot.list_tables(TableType.REALTIME))
    wanted = {ref for name in tables if (ref := _as_realtime(name)) is not None}
    resumed: list[TableRef] = []
    for table in sorted(wanted & present):
        status = await pinot.pause_status(table.name_with_type)
        if not status.paused:
            continue
        await pinot.resume_consumption(
            table.name_with_type, consume_from=ConsumeFrom.LAST_CONSUMED, comment=RESUMED_COMMENT
        )
        resumed.append(table)
        log.info("table %s: consumption resumed from the restored segments' end offsets", table)
    return resumed
