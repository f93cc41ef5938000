"""Table configs and schemas are named by their digest: "as of T" restores the document of T,
and a fenced writer cannot change what a newer entry points at (emulator, real bucket)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from az_agent.agent.backup.tables import encode_document, save_table_documents
from az_agent.agent.restore.pinot import load_document, restore_table_configs
from az_agent.drivers.errors import CorruptObject
from az_agent.drivers.pinot import TableRef, TableType
from az_agent.emulators.pinot import EmulatorOptions, PinotEmulator
from az_agent.state import ConfigRecord, Fenced, SchemaPayload, SystemClock, load_catalog
from tests.integration.agent_pinot.conftest import Bucket, DeletingController, lead
from tests.integration.pinot.support import RawHttp
from tests.unit.state.helpers import FaultyStore, Overlap

ZONE = "az1"
LOGS = TableRef("logs", TableType.OFFLINE)


async def _replace_config(http: RawHttp, config: dict[str, Any], retention: str) -> None:
    """Change the table's config in Pinot (the emulator has no PUT: delete and create)."""
    changed = {
        **config,
        "segmentsConfig": {**config["segmentsConfig"], "retentionTimeValue": retention},
    }
    status, _, body = await http.call("DELETE", f"/tables/{LOGS.name_with_type}")
    assert status == 200, body
    status, _, body = await http.call("POST", "/tables", json=changed)
    assert status == 200, body


async def _config(pinot: DeletingController) -> dict[str, Any]:
    return dict((await pinot.table_configs(LOGS.raw, LOGS.type))[TableType.OFFLINE])


async def test_restore_as_of_gets_that_time_and_a_fenced_writer_changes_nothing(
    any_bucket: Bucket, pinot: DeletingController, http: RawHttp, tmp_path: Any
) -> None:
    store = any_bucket.store
    stale = await lead(store, ZONE)
    assert await save_table_documents(stale, pinot, LOGS) == ["table-config", "schema"]
    first = await _config(pinot)
    t1 = stale.catalog.schemas()[LOGS.raw].committed_at  # the config, then its schema

    while SystemClock().now() <= t1:  # t2 strictly after t1: one tick of the clock at most
        pass
    leader = await lead(store, ZONE, force=True)  # a new epoch: ``stale`` is fenced
    await _replace_config(http, first, "7")
    assert await save_table_documents(leader, pinot, LOGS) == ["table-config"]
    second = await _config(pinot)
    t2 = leader.catalog.table_configs()[LOGS.name_with_type]
    assert t2.committed_at > t1

    # The fenced writer sees yet another version: its put lands (an orphan), its entry does not.
    await _replace_config(http, first, "99")
    with pytest.raises(Fenced):
        await save_table_documents(stale, pinot, LOGS)

    catalog = await load_catalog(store, ZONE)
    as_of_t1 = catalog.table_configs(as_of=t1)[LOGS.name_with_type]
    assert await load_document(store, as_of_t1) == first
    newest = catalog.table_configs()[LOGS.name_with_type]
    assert newest.seq == t2.seq
    assert await load_document(store, newest) == second
    assert as_of_t1.key != newest.key
    assert newest.key == f"{ZONE}/pinot/tables/{LOGS.name_with_type}/{newest.sha256}.json"
    schema = catalog.schemas()[LOGS.raw]
    assert schema.key == f"{ZONE}/pinot/schemas/{LOGS.raw}/{schema.sha256}.json"

    # Restoring into an empty Pinot as of t1 creates the table with the t1 config.
    async with (
        PinotEmulator(tmp_path / "zone2", options=EmulatorOptions()) as target,
        DeletingController(target.url) as restored,
    ):
        assert await restore_table_configs(restored, store, catalog, t1) == [LOGS]
        assert await _config(restored) == first


async def test_old_flat_keys_stay_readable_and_a_mismatch_is_refused(
    file_bucket: Bucket,
) -> None:
    store = file_bucket.store
    session = await lead(store, ZONE)
    document = {"schemaName": "logs"}
    data = encode_document(document)
    digest = hashlib.sha256(data).hexdigest()

    legacy = f"{ZONE}/pinot/schemas/logs.json"  # written by agents before content addressing
    await store.put(legacy, data)
    payload = SchemaPayload(name="logs", key=legacy, sha256=digest)
    entry = await session.commit(payload)
    assert await load_document(store, ConfigRecord.from_entry(entry, payload)) == document

    addressed = f"{ZONE}/pinot/schemas/logs/{digest}.json"
    await store.put(addressed, encode_document({"schemaName": "logs", "other": 1}))
    payload = SchemaPayload(name="logs", key=addressed, sha256=digest)
    entry = await session.commit(payload)
    with pytest.raises(CorruptObject, match=digest):
        await load_document(store, ConfigRecord.from_entry(entry, payload))


async def test_a_restore_reads_the_documents_pinot_lacks_together(
    any_bucket: Bucket, pinot: DeletingController, tmp_path: Any
) -> None:
    """An activation into an empty Pinot reads the schema and the table config from the
    bucket at once: one round trip, not one each."""
    leader = await lead(any_bucket.store, ZONE)
    await save_table_documents(leader, pinot, LOGS)
    catalog = await load_catalog(any_bucket.store, ZONE)
    watched = FaultyStore(any_bucket.store)  # counts and holds; closing stays the fixture's
    watched.before = overlap = Overlap(("get",))
    async with (
        PinotEmulator(tmp_path / "zone2", options=EmulatorOptions()) as target,
        DeletingController(target.url) as restored,
    ):
        assert await restore_table_configs(restored, watched, catalog) == [LOGS]
    assert (watched.calls["get"], overlap.peak) == (2, 2)
