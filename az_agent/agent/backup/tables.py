"""Pinot table configs and schemas saved to the bucket while backing up.

One encoding (:func:`encode_document`: sorted keys, compact), so "has it changed?" is a
comparison of SHA-256s with the catalog's newest record. Each version is stored under its
digest (``<zone>/pinot/tables/<table>/<sha256>.json``) with a create-only write: a log entry's
document never changes after the entry is written, so "as of ``latestTime``" restores the version
current then, and a fenced writer's late put lands beside it (an orphan) instead of over it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Literal

from az_agent.agent.leadership.session import LeaderSession
from az_agent.drivers.errors import CorruptObject, NotFound, PreconditionFailed
from az_agent.drivers.pinot.base import PinotController
from az_agent.drivers.pinot.models import JsonObject, TableRef
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import SchemaPayload, TableConfigPayload
from az_agent.state.keys import schema_key, table_config_key

log = logging.getLogger(__name__)

DocumentKind = Literal["table-config", "schema"]


def encode_document(body: JsonObject) -> bytes:
    """The stored form of a table config or schema: equal documents give equal bytes."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


async def save_table_documents(
    session: LeaderSession, pinot: PinotController, table: TableRef
) -> list[DocumentKind]:
    """Save ``table``'s config and schema where they differ from the catalog; what was saved."""
    try:
        configs = await pinot.table_configs(table.raw, table.type)
        schema = await pinot.table_schema(table.raw)
    except NotFound:
        return []  # deleted since it was listed
    saved: list[DocumentKind] = []
    config = configs.get(table.type)
    if config is not None and await _save(session, "table-config", table.name_with_type, config):
        saved.append("table-config")
    if await _save(session, "schema", str(schema.get("schemaName") or table.raw), schema):
        saved.append("schema")
    return saved


async def _save(session: LeaderSession, kind: DocumentKind, name: str, body: JsonObject) -> bool:
    data = encode_document(body)
    digest = hashlib.sha256(data).hexdigest()
    catalog = session.catalog
    known = (catalog.table_configs() if kind == "table-config" else catalog.schemas()).get(name)
    if known is not None and known.sha256 == digest:
        return False
    payload: TableConfigPayload | SchemaPayload
    if kind == "table-config":
        payload = TableConfigPayload(
            name=name, key=table_config_key(session.zone, name, digest), sha256=digest
        )
    else:
        payload = SchemaPayload(
            name=name, key=schema_key(session.zone, name, digest), sha256=digest
        )
    await _store_once(session.store, payload.key, data, digest)
    await session.commit(payload)
    log.info("saved %s %s to %s (%s)", kind, name, payload.key, "changed" if known else "new")
    return True


async def _store_once(store: ObjectStore, key: str, data: bytes, digest: str) -> None:
    """Create ``key``; one already there is fine when it holds these bytes (a version seen
    before, or a retry whose first answer was lost), and ``CorruptObject`` otherwise."""
    try:
        await store.put(key, data, if_none_match=True)
    except PreconditionFailed:
        stored, _ = await store.get(key)
        if hashlib.sha256(stored).hexdigest() != digest:
            raise CorruptObject(
                f"{key}: holds other bytes than the SHA-256 {digest} its name says"
            ) from None
