"""The checker itself, proven: hand-built logs and buckets that break each invariant are reported,
and a clean handover is not."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.config import CloudStorageSettings, FileSettings
from az_agent.drivers.storage.factory import open_object_store
from az_agent.state import (
    DumpDeletedPayload,
    DumpPayload,
    FencePayload,
    LogEntry,
    PausedPayload,
    Payload,
    SegmentPayload,
    TableConfigPayload,
)
from az_agent.state.keys import log_key
from tests.chaos.checker import (
    FENCING,
    LOG,
    OBJECTS,
    ONE_PRIMARY,
    RESTORE,
    ActivationRecord,
    BucketSnapshot,
    LeaderSample,
    ObjectRead,
    PrimarySample,
    TrialHistory,
    Violation,
    check,
    read_bucket,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TABLE = "events_REALTIME"


class _TermEntry(LogEntry):
    """``LogEntry`` with a term, for as long as the state package has none."""

    term: int = 0


Entry: type[LogEntry] = LogEntry if "term" in LogEntry.model_fields else _TermEntry


def entry(
    seq: int, epoch: int, writer: str, payload: Payload, at: float, term: int = 0
) -> LogEntry:
    return Entry(
        seq=seq,
        epoch=epoch,
        term=term,
        writer=writer,
        nonce=f"nonce-{seq}",
        time=T0 + timedelta(seconds=at),
        payload=payload,
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def segment(zone: str, name: str, crc: str = "111", data: bytes = b"x") -> SegmentPayload:
    return SegmentPayload(
        table=TABLE,
        table_type="REALTIME",
        segment=name,
        crc=crc,
        size=len(data),
        sha256=sha(data),
        key=f"{zone}/segments/{TABLE}/{name}/{crc}.tar.gz",
        backed_up_at=T0,
        commit_time_ms=None,
    )


def fence(epoch: int, previous: int, by: str) -> FencePayload:
    return FencePayload(epoch=epoch, previous_epoch=previous, by=by)


def objects_of(logs: dict[str, list[LogEntry]]) -> dict[str, ObjectRead]:
    """Every object the entries name, read back intact."""
    reads = {}
    for entries in logs.values():
        for e in entries:
            payload = e.payload
            if isinstance(payload, SegmentPayload):
                reads[payload.key] = ObjectRead(payload.key, payload.sha256, payload.size)
    return reads


def handover() -> dict[str, list[LogEntry]]:
    """az1 leads and backs up two segments, pauses; az2 activates from it and leads."""
    return {
        "az1": [
            entry(1, 1, "a1", fence(1, 0, "a1"), 0.0),
            entry(2, 1, "a1", segment("az1", "s1"), 1.0),
            entry(3, 1, "a1", segment("az1", "s2"), 2.0),
            entry(4, 1, "a1", PausedPayload(epoch=1), 3.0),
            entry(5, 2, "b1", fence(2, 1, "b1"), 4.0),
        ],
        "az2": [
            entry(1, 1, "b1", fence(1, 0, "b1"), 6.0),
            entry(2, 1, "b1", segment("az2", "s1"), 6.5),
            entry(3, 1, "b1", segment("az2", "s3", "333"), 7.0),
        ],
    }


def restored(pinot: dict[tuple[str, str], str] | None = None, **fields: Any) -> ActivationRecord:
    record = ActivationRecord(
        operation="activate-1",
        agent="az2-a",
        target="az2",
        source="az1",
        epoch=2,
        finished_at=5.5,
        pinot={(TABLE, "s1"): "111", (TABLE, "s2"): "111"} if pinot is None else pinot,
        uploads={(TABLE, "s1"), (TABLE, "s2")},
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def judged(
    logs: dict[str, list[LogEntry]], history: TrialHistory | None = None, **bucket: Any
) -> list[Violation]:
    snapshot = BucketSnapshot(logs=logs, objects=bucket.pop("objects", objects_of(logs)))
    for name, value in bucket.items():
        setattr(snapshot, name, value)
    return check(snapshot, history or TrialHistory(activations=[restored()]), seed=42)


def only(violations: list[Violation], invariant: str) -> Violation:
    assert [v.invariant for v in violations] == [invariant], [str(v) for v in violations]
    return violations[0]


def test_a_clean_handover_passes() -> None:
    assert judged(handover()) == []


def test_violations_name_the_seed() -> None:
    logs = handover()
    logs["az1"].append(entry(6, 1, "a1", segment("az1", "late"), 4.5))
    assert str(only(judged(logs), FENCING)).startswith("seed 42: [fencing] zone az1")


# ------------------------------------------------------------------------------ one primary


def cross_activated() -> dict[str, list[LogEntry]]:
    """Both zones activated from each other at once: both lead and back up afterwards."""
    logs = handover()
    logs["az2"] += [
        entry(4, 1, "b1", PausedPayload(epoch=1), 8.0),
        entry(5, 2, "a2", fence(2, 1, "a2"), 9.0),  # az1 activates from az2
        entry(6, 3, "b2", fence(3, 2, "b2"), 10.0),  # az2 took its lease back: leads
        entry(7, 3, "b2", segment("az2", "s4", "444"), 11.0),
        entry(8, 3, "b2", segment("az2", "s5", "555"), 13.0),
    ]
    logs["az1"] += [
        entry(6, 3, "b2", fence(3, 2, "b2"), 9.1),  # az2 activates from az1
        entry(7, 4, "a2", fence(4, 3, "a2"), 10.5),  # az1 took its lease back: leads
        entry(8, 4, "a2", segment("az1", "s6", "666"), 12.0),
    ]
    return logs


def test_two_zones_backing_up_at_once_are_two_primaries() -> None:
    violation = only(judged(cross_activated()), ONE_PRIMARY)
    assert "zone az2 (b2, epoch 3" in violation.description
    assert "zone az1 started leading (a2, epoch 4" in violation.description


def test_sessions_of_different_terms_may_overlap() -> None:
    logs = cross_activated()
    logs["az1"] = [e.model_copy(update={"term": 1 if e.seq < 7 else 3}) for e in logs["az1"]]
    logs["az2"] = [e.model_copy(update={"term": 2}) for e in logs["az2"]]
    assert judged(logs) == []


def test_backups_of_two_zones_under_one_term_are_two_primaries() -> None:
    logs = {
        zone: [e.model_copy(update={"term": 3}) for e in entries]
        for zone, entries in handover().items()
    }
    violation = only(judged(logs), ONE_PRIMARY)
    assert violation.description == "term 3: zones ['az1', 'az2'] all wrote backups"


def leader(zone: str, agent: str, at: float, term: int = 0) -> LeaderSample:
    return LeaderSample(at=at, zone=zone, agent=agent, epoch=7, term=term)


def test_agents_of_two_zones_seen_leading_with_one_term() -> None:
    history = TrialHistory(
        leaders=[
            (leader("az1", "az1-a", 3.0), leader("az2", "az2-b", 3.0)),
            (leader("az1", "az1-a", 3.5), leader("az2", "az2-b", 3.5)),
            (leader("az1", "az1-a", 4.0, term=1), leader("az2", "az2-b", 4.0, term=2)),
        ],
        activations=[restored()],
    )
    violation = only(judged(handover(), history), ONE_PRIMARY)
    assert "az1-a (zone az1, epoch 7), az2-b (zone az2, epoch 7)" in violation.description
    assert "seen 2 times from t=3.00s to t=3.50s" in violation.description


def test_a_primary_record_naming_two_zones_for_one_term() -> None:
    history = TrialHistory(
        primaries=[PrimarySample(1.0, "az1", 1), PrimarySample(5.0, "az2", 2)],
        activations=[restored()],
    )
    assert judged(handover(), history, primary={"zone": "az2", "term": 2}) == []
    violation = only(judged(handover(), history, primary={"zone": "az1", "term": 2}), ONE_PRIMARY)
    assert violation.description == "the primary record named zones ['az1', 'az2'] for term 2"


def test_backups_under_a_term_the_record_gave_another_zone() -> None:
    logs = handover()
    logs["az2"] = [e.model_copy(update={"term": 1}) for e in logs["az2"]]
    history = TrialHistory(primaries=[PrimarySample(1.0, "az1", 1)], activations=[restored()])
    violation = only(judged(logs, history), ONE_PRIMARY)
    assert "zone az2 wrote 2 backups under term 1, whose primary record named ['az1']" in str(
        violation
    )


# ------------------------------------------------------------------------------ fencing


def test_a_zombie_entry_after_a_newer_fence() -> None:
    logs = handover()
    logs["az1"].append(entry(6, 1, "a1", segment("az1", "late"), 4.5))
    violation = only(judged(logs), FENCING)
    assert "entry 6 (segment by a1, term 0, epoch 1) after entry 5" in violation.description


def test_a_stale_term_with_a_higher_epoch_is_stale() -> None:
    logs = handover()
    logs["az1"] = [e.model_copy(update={"term": 1}) for e in logs["az1"]]
    logs["az1"][-1] = logs["az1"][-1].model_copy(update={"term": 2})
    logs["az1"].append(entry(6, 9, "a3", fence(9, 2, "a3"), 4.5, term=1))
    only(judged(logs), FENCING)


def test_a_higher_term_with_a_lower_epoch_fences() -> None:
    logs = handover()
    logs["az1"] = [e.model_copy(update={"term": 1}) for e in logs["az1"]]
    logs["az1"].append(entry(6, 1, "c1", fence(1, 2, "c1"), 4.5, term=2))
    assert judged(logs) == []


# ------------------------------------------------------------------------------ objects


def test_a_missing_or_changed_object() -> None:
    logs = handover()
    objects = objects_of(logs)
    gone = segment("az1", "s2").key
    objects[gone] = ObjectRead(gone, error="NotFound: no such key")
    changed = segment("az2", "s3", "333").key
    objects[changed] = ObjectRead(changed, sha(b"y"), 1)
    violations = judged(logs, objects=objects)
    assert [v.invariant for v in violations] == [OBJECTS, OBJECTS]
    assert "entry 3 (segment) az1/segments" in violations[0].description
    assert "unreadable: NotFound" in violations[0].description
    assert f"SHA-256 {sha(b'y')}, the entry recorded {sha(b'x')}" in violations[1].description


def test_a_truncated_object() -> None:
    logs = handover()
    objects = objects_of(logs)
    key = segment("az1", "s1").key
    objects[key] = ObjectRead(key, sha(b"x"), 0)
    assert (
        "0 bytes, the entry recorded 1" in only(judged(logs, objects=objects), OBJECTS).description
    )


def test_a_rewritten_config_and_a_retired_dump() -> None:
    logs = handover()
    dump = DumpPayload(
        database="configdb",
        key="az1/postgres/configdb/x.dump",
        size=1,
        sha256=sha(b"d"),
        started_at=T0,
        finished_at=T0,
    )
    logs["az1"][3:3] = [
        entry(
            4,
            1,
            "a1",
            TableConfigPayload(name=TABLE, key="az1/pinot/t.json", sha256=sha(b"1")),
            2.1,
        ),
        entry(
            5,
            1,
            "a1",
            TableConfigPayload(name=TABLE, key="az1/pinot/t.json", sha256=sha(b"2")),
            2.2,
        ),
        entry(6, 1, "a1", dump, 2.3),
        entry(7, 1, "a1", DumpDeletedPayload(database="configdb", dump_seq=6, key=dump.key), 2.4),
    ]
    logs["az1"][-2:] = [
        entry(8, 1, "a1", PausedPayload(epoch=1), 3.0),
        entry(9, 2, "b1", fence(2, 1, "b1"), 4.0),
    ]
    objects = objects_of(logs)
    objects["az1/pinot/t.json"] = ObjectRead("az1/pinot/t.json", sha(b"2"), 1)
    objects[dump.key] = ObjectRead(dump.key, error="NotFound: deleted by retention")
    violation = only(judged(logs, objects=objects), OBJECTS)
    assert "1 committed objects" in violation.description
    assert "entry 4 (table-config) az1/pinot/t.json" in violation.description
    assert "(entry 5 names the same key: it was rewritten)" in violation.description


# ------------------------------------------------------------------------------ restores


def test_a_restore_missing_a_committed_segment() -> None:
    history = TrialHistory(activations=[restored(pinot={(TABLE, "s1"): "111"})])
    violation = only(judged(handover(), history), RESTORE)
    assert "activation activate-1 of zone az2 from az1 (agent az2-a)" in violation.description
    assert "1 of 2 segments committed before its fence (entry 5)" in violation.description
    assert f"{TABLE}/s2 (CRC 111, Pinot has None)" in violation.description


def test_a_restore_with_another_crc() -> None:
    history = TrialHistory(
        activations=[restored(pinot={(TABLE, "s1"): "111", (TABLE, "s2"): "999"})]
    )
    assert "(CRC 111, Pinot has 999)" in only(judged(handover(), history), RESTORE).description


def test_a_restore_of_something_never_committed() -> None:
    history = TrialHistory(
        activations=[restored(uploads={(TABLE, "s1"), (TABLE, "s2"), (TABLE, "ghost")})]
    )
    violation = only(judged(handover(), history), RESTORE)
    assert f"restored 1 segments not committed before its fence (entry 5): {TABLE}/ghost" in (
        violation.description
    )


def test_only_what_preceded_the_fence_is_owed() -> None:
    logs = handover()
    logs["az1"].append(entry(6, 2, "b1", segment("az1", "after"), 4.5))
    assert judged(logs) == []


def test_a_restore_whose_fence_is_missing() -> None:
    missing = TrialHistory(activations=[restored(epoch=5)])
    assert "no fence with epoch 5 in zone az1's log" in str(
        only(judged(handover(), missing), RESTORE)
    )
    unknown = TrialHistory(activations=[restored(epoch=None)])
    assert "without recording the epoch" in str(only(judged(handover(), unknown), RESTORE))


# ------------------------------------------------------------------------------ a real bucket


@pytest.fixture
async def file_store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    settings = CloudStorageSettings(type="file", file=FileSettings(path=str(tmp_path / "b")))
    store = await open_object_store(settings)
    try:
        yield store
    finally:
        await store.close()


async def test_read_bucket_finds_gaps_corrupt_entries_and_changed_objects(
    file_store: ObjectStore,
) -> None:
    logs = handover()
    for zone, entries in logs.items():
        for e in entries:
            await file_store.put(log_key(zone, e.seq), e.encode())
    for key in objects_of(logs):
        await file_store.put(key, b"x")
    await file_store.put(segment("az2", "s3", "333").key, b"not what was recorded")
    await file_store.put(log_key("az2", 5), b"{not an entry")
    await file_store.put(log_key("az2", 7), logs["az2"][0].model_copy(update={"seq": 7}).encode())
    await file_store.put("primary/default.json", json.dumps({"zone": "az2", "term": 1}).encode())

    snapshot = await read_bucket(file_store, ["az1", "az2"])
    assert [e.seq for e in snapshot.logs["az1"]] == [1, 2, 3, 4, 5]
    assert snapshot.primary == {"zone": "az2", "term": 1}
    violations = check(snapshot, TrialHistory(activations=[restored()]))
    assert [v.invariant for v in violations] == [LOG, LOG, OBJECTS]
    assert violations[0].description == "zone az2: log has gaps at 4, 6"
    assert violations[1].description.startswith("zone az2: entry 5 unreadable:")
    assert "entry 3 (segment) az2/segments" in violations[2].description
