"""An agent killed in the middle of a dump: nothing committed, the next agent's dump succeeds,
and what a kill after the upload leaves behind is swept as an orphan."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.storage.base import Body, ObjectInfo
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import NotLeader, load_catalog, sweep_orphans
from tests.fakeclock import FakeClock
from tests.integration.agent_postgres.helpers import (
    ZONE,
    backup_loop,
    dump_entries,
    lead,
    object_keys,
    running,
    until,
)
from tests.integration.postgres.helpers import big_database, children_named
from tests.integration.postgres.stores import WrappedStore
from tests.servers.postgres import PostgresServer


class HangingStore(WrappedStore):
    """Dump uploads hang, as a process frozen right then would: ``mid_stream`` after the first
    chunk (pg_dump still writing), ``after_upload`` once the object is complete."""

    def __init__(self, inner: FileObjectStore) -> None:
        super().__init__(inner)
        self.mid_stream = False
        self.after_upload = False
        self.hanging = asyncio.Event()

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        if "/postgres/" in key and self.mid_stream:
            assert not isinstance(body, bytes)
            async for _ in body:
                self.hanging.set()
                await asyncio.Event().wait()
        info = await self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match)
        if "/postgres/" in key and self.after_upload:
            self.hanging.set()
            await asyncio.Event().wait()
        return info


async def test_kill_mid_dump_commits_nothing_and_the_orphan_is_swept(
    zone1: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await big_database(zone1, dbname)
    bucket = FileObjectStore(tmp_path / "bucket")
    store = HangingStore(bucket)
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    options = {"first_delay_seconds": 0.0}

    store.mid_stream = True
    loop = backup_loop(zone1, clock, metrics, [dbname], options=options, dump_compression=0)
    killed = asyncio.create_task(loop.run(await lead(store, clock, metrics)))
    await asyncio.wait_for(store.hanging.wait(), 10)
    assert list(children_named("pg_dump"))  # the kill lands while pg_dump is running
    killed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await killed
    assert not list(children_named("pg_dump"))
    assert await dump_entries(bucket) == []
    assert await object_keys(bucket) == []

    store.mid_stream, store.hanging = False, asyncio.Event()
    loop = backup_loop(zone1, clock, metrics, [dbname], options=options, dump_compression=0)
    session = await lead(store, clock, metrics)  # the restarted agent, after the lease's TTL
    async with running(loop, session):
        await until(lambda: len(session.catalog.dumps(dbname)) == 1)
        [committed] = session.catalog.dumps(dbname)
        store.after_upload = True
        final = asyncio.create_task(loop.dump_now("final"))
        await asyncio.wait_for(store.hanging.wait(), 10)
    with pytest.raises(NotLeader):  # killed between the upload and its log entry
        await final
    assert [p.key for p in await dump_entries(bucket)] == [committed.key]
    [orphan] = set(await object_keys(bucket)) - {committed.key}

    catalog = await load_catalog(bucket, ZONE)
    clock.advance(60)
    removed = await sweep_orphans(bucket, ZONE, catalog, timedelta(0), clock)
    assert [info.key for info in removed] == [orphan]
    assert await object_keys(bucket) == [committed.key]
