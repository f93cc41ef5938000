"""The catalog, built entry by entry: latest CRC per segment, dumps, configs, "as of" queries."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from az_agent.state import (
    Catalog,
    DumpDeletedPayload,
    DumpPayload,
    FencePayload,
    LogCorrupted,
    LogEntry,
    PausedPayload,
    Payload,
    SchemaPayload,
    TableConfigPayload,
)
from az_agent.state.keys import dump_key, schema_key, table_config_key
from tests.unit.state.helpers import segment

ZONE = "az1"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Log:
    """Feeds a catalog entries one minute apart (or at chosen times)."""

    def __init__(self) -> None:
        self.catalog = Catalog(ZONE)
        self.seq = 0

    def add(self, payload: Payload, minute: float, epoch: int = 1) -> LogEntry:
        self.seq += 1
        entry = LogEntry(
            seq=self.seq, epoch=epoch, writer="w", nonce=str(self.seq), time=at(minute),
            payload=payload,
        )  # fmt: skip
        self.catalog.apply(entry)
        return entry


def dump(database: str, stamp: str) -> DumpPayload:
    return DumpPayload(
        database=database,
        key=dump_key(ZONE, database, stamp),
        size=10,
        sha256="ab" * 32,
        server_version="15.18",
        started_at=T0,
        finished_at=T0,
    )


def test_segments_as_of_follow_commit_time_and_crc_changes() -> None:
    log = Log()
    log.add(FencePayload(epoch=1, previous_epoch=0, by="w"), 0)
    log.add(segment(ZONE, "a", crc="1"), 10)
    log.add(segment(ZONE, "b", crc="7"), 20)
    log.add(segment(ZONE, "a", crc="2"), 30)  # refreshed segment: new CRC
    log.add(segment(ZONE, "a", crc="2"), 40)  # the same bytes backed up again
    catalog = log.catalog

    def crcs(as_of: datetime | None) -> dict[str, str]:
        return {s.name: s.crc for s in catalog.segments(as_of)}

    assert crcs(at(9)) == {}
    assert crcs(at(10)) == {"a": "1"}
    assert crcs(at(29.9)) == {"a": "1", "b": "7"}
    assert crcs(at(30)) == {"a": "2", "b": "7"}
    assert crcs(None) == {"a": "2", "b": "7"}
    newest = catalog.segment("metrics_OFFLINE", "a")
    assert newest is not None
    assert (newest.seq, newest.committed_at) == (4, at(30))  # first entry of that CRC
    assert catalog.segment_count == 2
    assert catalog.tables() == ["metrics_OFFLINE"]
    assert catalog.segment("metrics_OFFLINE", "a", at(15)).crc == "1"  # type: ignore[union-attr]
    assert catalog.segments(table="other") == []


def test_segment_record_keeps_what_a_restore_needs() -> None:
    log = Log()
    payload = segment(ZONE, "a", crc="99", data=b"x" * 5)
    log.add(payload, 1)
    (record,) = log.catalog.segments()
    assert record.object_key == payload.key
    assert record.key_override is None  # canonical keys are not stored twice
    assert (record.size, record.sha256, record.table_type) == (5, payload.sha256, "OFFLINE")
    assert (record.start_time_ms, record.end_time_ms) == (
        payload.start_time_ms,
        payload.end_time_ms,
    )
    assert record.backed_up_at == payload.backed_up_at
    custom = segment(ZONE, "b", key=f"{ZONE}/segments/elsewhere/b.tgz")
    log.add(custom, 2)
    assert log.catalog.segment("metrics_OFFLINE", "b").object_key == custom.key  # type: ignore[union-attr]


def test_dumps_as_of_and_retention() -> None:
    log = Log()
    first = log.add(dump("configdb", "20300101T000000Z"), 0)
    log.add(dump("orchestratordb", "20300101T000100Z"), 1)
    second = log.add(dump("configdb", "20300101T010000Z"), 60)
    catalog = log.catalog
    assert [d.seq for d in catalog.dumps("configdb")] == [first.seq, second.seq]
    assert catalog.newest_dump("configdb", at(59)).seq == first.seq  # type: ignore[union-attr]
    assert catalog.newest_dump("configdb", at(60)).seq == second.seq  # type: ignore[union-attr]
    assert catalog.newest_dump("configdb", at(-1)) is None
    assert catalog.databases() == ["configdb", "orchestratordb"]
    key = dump_key(ZONE, "configdb", "20300101T000000Z")
    log.add(DumpDeletedPayload(database="configdb", dump_seq=first.seq, key=key), 61)
    assert [d.seq for d in catalog.dumps("configdb", at(30))] == []  # deleted: not restorable
    assert not catalog.references(key)
    assert catalog.references(dump_key(ZONE, "configdb", "20300101T010000Z"))


def test_table_configs_and_schemas_as_of() -> None:
    log = Log()
    first = table_config_key(ZONE, "metrics", "1" * 64)
    second = table_config_key(ZONE, "metrics", "3" * 64)
    schema = schema_key(ZONE, "metrics", "2" * 64)
    log.add(TableConfigPayload(name="metrics", key=first, sha256="1" * 64), 0)
    log.add(SchemaPayload(name="metrics", key=schema, sha256="2" * 64), 1)
    log.add(TableConfigPayload(name="metrics", key=second, sha256="3" * 64), 5)
    catalog = log.catalog
    assert catalog.table_configs(at(4))["metrics"].key == first
    assert catalog.table_configs()["metrics"].key == second
    assert catalog.schemas(at(0)) == {}
    assert catalog.schemas()["metrics"].key == schema
    assert second == f"{ZONE}/pinot/tables/metrics/{'3' * 64}.json"
    # Every version stays referenced: "as of" an older time still finds its document.
    assert catalog.references(first)
    assert catalog.references(second)


def test_handover_records_and_epoch() -> None:
    log = Log()
    log.add(FencePayload(epoch=1, previous_epoch=0, by="a"), 0)
    paused = log.add(
        PausedPayload.model_validate({"epoch": 1, "dumpSeqs": {"configdb": 1}, "note": "kept"}), 1
    )
    fence = log.add(FencePayload(epoch=2, previous_epoch=1, by="b"), 2, epoch=2)
    catalog = log.catalog
    assert (catalog.last_paused, catalog.last_fence) == (paused, fence)
    assert (catalog.epoch, catalog.last_seq) == (2, 3)
    assert catalog.last_paused.payload.model_extra == {"note": "kept"}  # type: ignore[union-attr]


def test_entries_must_come_without_gaps_and_once() -> None:
    log = Log()
    entry = log.add(segment(ZONE, "a"), 0)
    assert not log.catalog.apply(entry)  # already applied: ignored
    log.seq += 1  # skip a number
    with pytest.raises(LogCorrupted):
        log.add(segment(ZONE, "b"), 1)


def test_entry_with_a_lower_epoch_is_never_part_of_the_backup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = Log()
    log.add(FencePayload(epoch=2, previous_epoch=1, by="b"), 0, epoch=2)
    with caplog.at_level(logging.CRITICAL):
        log.add(segment(ZONE, "stale"), 1, epoch=1)
    assert log.catalog.segments() == []
    assert log.catalog.anomalies == 1
    assert "fencing was violated" in caplog.text
    log.add(segment(ZONE, "fresh"), 2, epoch=2)
    assert [s.name for s in log.catalog.segments()] == ["fresh"]


def test_references_cover_every_version_and_nothing_else() -> None:
    log = Log()
    old = segment(ZONE, "a", crc="1")
    new = segment(ZONE, "a", crc="2")
    log.add(old, 0)
    log.add(new, 1)
    catalog = log.catalog
    assert catalog.references(old.key)
    assert catalog.references(new.key)
    assert not catalog.references(segment(ZONE, "a", crc="3").key)
    assert not catalog.references(segment(ZONE, "z").key)
    assert not catalog.references("az2/segments/metrics_OFFLINE/a/1.tar.gz")
    assert catalog.describe()["segments"] == 1
