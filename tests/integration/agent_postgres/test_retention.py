"""Retention deletes what the log says is superseded, in log order, never the newest dump."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from az_agent.agent.backup.postgres import expired_dumps
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.postgres.config import RetentionSettings
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import DumpDeletedPayload, DumpRecord
from tests.fakeclock import FakeClock
from tests.integration.agent_postgres.helpers import (
    ZONE,
    backup_loop,
    deletions,
    dump_entries,
    entries,
    lead,
    object_keys,
    running,
)
from tests.integration.postgres.helpers import seeded
from tests.servers.postgres import PostgresServer

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def record(seq: int, started: datetime) -> DumpRecord:
    return DumpRecord(
        "db", f"k{seq}", 1, "0" * 64, "15", started, started, seq, 1, started.timestamp()
    )


def test_keep_counts_in_log_order_and_max_age_only_trims_beyond_it() -> None:
    day = timedelta(days=1)
    # seq order differs from time order: the log decides
    dumps = [record(4, T0 + 3 * day), record(1, T0 + 2 * day), record(2, T0), record(3, T0 + day)]
    now = T0 + 4 * day
    assert [r.seq for r in expired_dumps(dumps, RetentionSettings(keep=2), now)] == [1, 2]
    aged = RetentionSettings(keep=1, max_age_days=2.5)
    assert [r.seq for r in expired_dumps(dumps, aged, now)] == [2, 3]  # seq 1 is 2 days old
    assert expired_dumps(dumps, RetentionSettings(keep=4, max_age_days=0.001), now) == []


def test_the_newest_dump_is_never_expired() -> None:
    dumps = [record(1, T0), record(2, T0 + timedelta(days=1))]
    late = T0 + timedelta(days=365)
    tiny = RetentionSettings(keep=1, max_age_days=1e-6)
    assert [r.seq for r in expired_dumps(dumps, tiny, late)] == [1]
    zero_keep = RetentionSettings.model_construct(keep=0, max_age_days=1e-6)  # bypasses ge=1
    assert [r.seq for r in expired_dumps(dumps, zero_keep, late)] == [1]
    assert expired_dumps(dumps[1:], zero_keep, late) == []


async def test_keep_two_after_four_dumps_deletes_the_oldest_by_log_order(
    zone1: PostgresServer, tmp_path: Path, dbname: str, caplog: pytest.LogCaptureFixture
) -> None:
    await seeded(zone1, dbname)
    store = FileObjectStore(tmp_path / "bucket")
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    options = {"first_delay_seconds": 1e6}
    loop = backup_loop(zone1, clock, metrics, [dbname], options=options, retention={"keep": 2})
    caplog.set_level(logging.INFO, logger="az_agent.agent.backup.postgres")
    dumps = []
    async with running(loop, await lead(store, clock, metrics)):
        for n in range(4):
            if n == 2:  # the wall clock jumps back: names of later dumps sort first
                clock.wall_offset = -timedelta(days=2)
            [dumped] = await loop.dump_now(f"dump {n}")
            dumps.append(dumped)
            clock.advance(600)
    assert sorted(d.key for d in dumps) == [dumps[2].key, dumps[3].key, dumps[0].key, dumps[1].key]

    assert await deletions(store) == [
        DumpDeletedPayload(database=dbname, dump_seq=d.seq, key=d.key) for d in dumps[:2]
    ]
    kinds = [e.payload.kind for e in await entries(store)]
    assert kinds == ["fence", "dump", "dump", "dump", "dump-deleted", "dump", "dump-deleted"]
    assert await object_keys(store) == sorted(d.key for d in dumps[2:])
    assert [p.key for p in await dump_entries(store)] == [d.key for d in dumps]
    assert sum("retention removed dump" in r.getMessage() for r in caplog.records) == 2


async def test_tiny_max_age_never_deletes_the_newest_dump(
    zone1: PostgresServer, tmp_path: Path, dbname: str
) -> None:
    await seeded(zone1, dbname)
    store = FileObjectStore(tmp_path / "bucket")
    clock, metrics = FakeClock(), AgentMetrics(ZONE)
    retention = {"keep": 1, "maxAgeDays": 1e-6}
    options = {"first_delay_seconds": 1e6}
    loop = backup_loop(zone1, clock, metrics, [dbname], options=options, retention=retention)
    session = await lead(store, clock, metrics)
    async with running(loop, session):
        for n in range(3):
            [dumped] = await loop.dump_now(f"dump {n}")
            assert session.catalog.dumps(dbname) == [dumped]
            assert await object_keys(store) == [dumped.key]
            clock.advance(86400)
    assert len(await deletions(store)) == 2
