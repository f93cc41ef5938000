"""Dump in zone 1, restore in zone 2, against real servers and a real object store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import asyncpg
import pytest

from az_agent.drivers.postgres.base import DumpResult
from az_agent.drivers.postgres.dumper import PgDumper
from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.factory import open_object_store
from az_agent.drivers.storage.file import FileObjectStore
from tests.conftest import BackendPool
from tests.integration.postgres.helpers import (
    connect,
    dumper_for,
    scratch_databases,
    seeded,
)
from tests.integration.postgres.schema import ROWS, TABLES, snapshot
from tests.servers.postgres import PostgresServer


async def _dump(dumper: PgDumper, database: str, store: ObjectStore) -> DumpResult:
    return await dumper.dump(database, store, f"az1/postgres/{database}/dump-1.dump")


async def test_round_trip_of_two_databases(
    zone1: PostgresServer,
    zone2: PostgresServer,
    dumper1: PgDumper,
    dumper2: PgDumper,
    file_store: FileObjectStore,
    dbname: str,
) -> None:
    names = [f"{dbname}_config", f"{dbname}_orch"]
    for variant, name in enumerate(names, start=1):
        await seeded(zone1, name, variant)
    before = time_now = datetime.now(UTC)
    dumps = [await _dump(dumper1, name, file_store) for name in names]

    for name, dump in zip(names, dumps, strict=True):
        stored, info = await file_store.get(dump.key)
        assert dump.database == name
        assert dump.size == len(stored) == info.size > 0
        assert dump.sha256 == hashlib.sha256(stored).hexdigest() == info.sha256
        assert stored.startswith(b"PGDMP")  # custom format
        assert dump.server_version.major == (15,)
        assert dump.pg_dump_version.major == (15,)
        assert time_now <= dump.started_at <= dump.finished_at <= datetime.now(UTC)
        assert dump.started_at.tzinfo is UTC
        result = await dumper2.restore(name, file_store, dump.key, dump.sha256, dump.size)
        assert (result.tables, result.rows, result.rows_exact) == (TABLES, ROWS, True)
        assert result.objects["views"] == 1
        assert result.objects["sequences"] == 5
        assert result.objects["functions"] == 1
        assert not result.replaced_existing
        assert before <= result.started_at <= result.finished_at

    for name in names:
        async with connect(zone1, name) as source, connect(zone2, name) as restored:
            assert await snapshot(restored) == await snapshot(source)
    assert not await scratch_databases(zone2)


async def test_sequences_continue_after_restore(
    zone1: PostgresServer,
    zone2: PostgresServer,
    dumper1: PgDumper,
    dumper2: PgDumper,
    file_store: FileObjectStore,
    dbname: str,
) -> None:
    await seeded(zone1, dbname, 1)
    dump = await _dump(dumper1, dbname, file_store)
    await dumper2.restore(dbname, file_store, dump.key, dump.sha256, dump.size)
    async with connect(zone2, dbname) as conn:
        max_ticket = await conn.fetchval("SELECT max(ticket) FROM public.alerts")
        new = await conn.fetchrow(
            "INSERT INTO public.alerts (rule, severity) VALUES ('new', 'info') RETURNING *"
        )
        assert new is not None
        assert new["id"] == 1501
        assert new["ticket"] == max_ticket + 5
        panel = await conn.fetchval(
            "INSERT INTO app.panels (dashboard_id, title, position) VALUES (1, 'p', 0) RETURNING id"
        )
        assert panel == 3001  # identity column
        assert await conn.fetchval("SELECT nextval('public.audit_log_id_seq')") == 2001


async def test_restore_replaces_a_live_database_and_ends_its_sessions(
    zone1: PostgresServer,
    zone2: PostgresServer,
    dumper1: PgDumper,
    dumper2: PgDumper,
    file_store: FileObjectStore,
    dbname: str,
) -> None:
    await seeded(zone1, dbname, 1)
    await seeded(zone2, dbname, 2)  # zone 2 holds other, older contents
    dump = await _dump(dumper1, dbname, file_store)
    async with connect(zone2, dbname) as session:
        result = await dumper2.restore(dbname, file_store, dump.key, dump.sha256, dump.size)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await session.fetchval("SELECT 1")  # ended by the swap
    assert result.replaced_existing
    async with connect(zone1, dbname) as source, connect(zone2, dbname) as restored:
        assert await snapshot(restored) == await snapshot(source)
    assert not await scratch_databases(zone2)


async def test_excluded_tables_keep_their_definition_but_not_their_rows(
    zone1: PostgresServer,
    zone2: PostgresServer,
    dumper2: PgDumper,
    file_store: FileObjectStore,
    dbname: str,
) -> None:
    await seeded(zone1, dbname, 1)
    dumper = dumper_for(
        zone1, databases=[dbname], exclude_tables={dbname: ["public.audit_*"]}, dump_compression=0
    )
    dump = await _dump(dumper, dbname, file_store)
    assert dump.excluded_table_data == ("public.audit_*",)
    assert dump.compression == 0
    result = await dumper2.restore(dbname, file_store, dump.key, dump.sha256, dump.size)
    assert (result.tables, result.rows) == (TABLES, ROWS - 2000)
    async with connect(zone2, dbname) as conn:
        assert await conn.fetchval("SELECT count(*) FROM public.audit_log") == 0
        assert await conn.fetchval("SELECT count(*) FROM app.panels") == 3000


async def test_round_trip_through_s3(
    backend_pool: BackendPool,
    zone1: PostgresServer,
    zone2: PostgresServer,
    dumper1: PgDumper,
    dumper2: PgDumper,
    dbname: str,
) -> None:
    settings, secrets = await backend_pool.get("s3").new_bucket()
    async with await open_object_store(settings, secrets) as store:
        await seeded(zone1, dbname, 3)
        dump = await _dump(dumper1, dbname, store)
        assert (await store.head(dump.key)).sha256 == dump.sha256
        result = await dumper2.restore(dbname, store, dump.key, dump.sha256, dump.size)
    assert result.rows == ROWS
    async with connect(zone1, dbname) as source, connect(zone2, dbname) as restored:
        assert await snapshot(restored) == await snapshot(source)
