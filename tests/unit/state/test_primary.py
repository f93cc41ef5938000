"""The primary record: its codec, ensure (create-only once), claim (one CAS, term + 1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from az_agent.drivers.errors import PreconditionFailed
from az_agent.state import (
    LogWriter,
    PrimaryCorrupted,
    PrimaryLock,
    PrimaryObservation,
    PrimaryRecord,
    PrimaryTaken,
    highest_term,
)
from az_agent.state.keys import primary_key
from tests.fakeclock import FakeClock
from tests.unit.state.helpers import FaultyStore, file_store, segment

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    opened = await file_store(tmp_path / "bucket")
    yield opened
    await opened.close()


@pytest.fixture
def lock(store: FaultyStore) -> PrimaryLock:
    return PrimaryLock(store, clock=FakeClock())


async def _nothing(op: str, key: str) -> None:
    del op, key


async def lose_put_responses(op: str, key: str) -> None:
    """After a put landed: the driver's retry reports PreconditionFailed for our own write."""
    if op == "put":
        raise PreconditionFailed(f"first attempt of {key} landed, its response was lost")


async def write_log(store: FaultyStore, zone: str, term: int, epoch: int = 1) -> None:
    writer = LogWriter(store, zone, epoch, f"{zone}-writer", clock=FakeClock(), term=term)
    await writer.write_fence()
    await writer.append(segment(zone, "s"))


# -- record and key -----------------------------------------------------------------------------


def test_record_is_camel_case_json_and_ignores_unknown_fields() -> None:
    record = PrimaryRecord(zone="az2", term=3, since=T0, operation_id="op-1", nonce="n1")
    stored = json.loads(record.encode())
    assert stored == {
        "zone": "az2",
        "term": 3,
        "since": "2030-01-01T00:00:00Z",
        "operationId": "op-1",
        "nonce": "n1",
        "previousZone": None,
        "automatic": None,
    }
    newer = json.dumps({**stored, "addedLater": True}).encode()
    assert PrimaryRecord.decode(newer, "k") == record
    ensured = PrimaryRecord.decode(
        json.dumps({k: v for k, v in stored.items() if k != "operationId"}).encode(), "k"
    )
    assert ensured.operation_id is None
    with pytest.raises(ValidationError):
        record.term = 4


TERM_ZERO = b'{"zone": "az1", "term": 0, "since": "2030-01-01T00:00:00Z", "nonce": "n"}'


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"zone": "az1"}', TERM_ZERO],
    ids=["garbage", "missing-fields", "term-zero"],
)
def test_anything_but_a_record_is_corrupted(body: bytes) -> None:
    with pytest.raises(PrimaryCorrupted, match=r"primary/default\.json: not a primary record"):
        PrimaryRecord.decode(body, "primary/default.json")


def test_primary_key_is_one_object_per_group(store: FaultyStore) -> None:
    assert primary_key("default") == "primary/default.json"
    assert primary_key("eu-pair") == "primary/eu-pair.json"
    for bad in ("a/b", "", ".."):
        with pytest.raises(ValueError, match=r"must not contain|bad path element|characters"):
            primary_key(bad)
    with pytest.raises(ValueError, match="must not contain '/'"):
        PrimaryLock(store, "a/b")
    assert PrimaryLock(store).key == "primary/default.json"


def test_an_observation_has_a_record_and_a_version_or_neither() -> None:
    record = PrimaryRecord(zone="az1", term=1, since=T0, nonce="n")
    assert PrimaryObservation(None, None).term == 0
    assert PrimaryObservation(record, "v1").zone == "az1"
    with pytest.raises(ValueError, match="both a record and a version"):
        PrimaryObservation(record, None)
    with pytest.raises(ValueError, match="both a record and a version"):
        PrimaryObservation(None, "v1")


# -- read and ensure ----------------------------------------------------------------------------


async def test_read_of_an_absent_record(lock: PrimaryLock) -> None:
    assert await lock.read() == PrimaryObservation(None, None)


async def test_corrupted_record_is_reported_not_replaced(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    await store.put(lock.key, b"{broken")
    with pytest.raises(PrimaryCorrupted):
        await lock.read()
    with pytest.raises(PrimaryCorrupted):
        await lock.ensure("az1")
    with pytest.raises(PrimaryCorrupted):
        await lock.claim(source="az1", zone="az2", operation_id="op")
    assert (await store.get(lock.key))[0] == b"{broken"


async def test_ensure_creates_term_one_then_returns_the_record_unchanged(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    created = await lock.ensure("az1")
    assert (created.zone, created.term, created.operation_id) == ("az1", 1, None)
    assert (await lock.read()).record == created
    puts = store.calls["put"]
    assert await lock.ensure("az1") == created
    assert await lock.ensure("az2") == created  # names az1: az2 learns it is not primary
    assert store.calls["put"] == puts
    assert ("put", "primary/default.json") in store.keys


async def test_ensure_starts_above_the_terms_already_in_the_zone_log(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    await write_log(store, "az1", term=4)
    await write_log(store, "az2", term=9)  # another zone's log is not consulted by ensure
    assert await highest_term(store, ["az1"]) == 4
    assert (await lock.ensure("az1")).term == 5


async def test_ensure_on_a_log_without_terms_gives_term_one(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    await write_log(store, "az1", term=0, epoch=7)
    assert (await lock.ensure("az1")).term == 1


async def test_concurrent_ensures_agree_on_one_record(store: FaultyStore) -> None:
    locks = [PrimaryLock(store, clock=FakeClock()) for _ in range(6)]
    records = await asyncio.gather(
        *(lock.ensure("az1" if i % 2 else "az2") for i, lock in enumerate(locks))
    )
    assert len({record.nonce for record in records}) == 1
    assert (await locks[0].read()).record == records[0]


async def test_ensure_whose_response_was_lost_returns_the_stored_record(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    store.after = lose_put_responses
    created = await lock.ensure("az1")
    store.after = _nothing
    assert (await lock.read()).record == created


async def test_records_of_groups_are_independent(store: FaultyStore) -> None:
    eu, us = PrimaryLock(store, "eu"), PrimaryLock(store, "us")
    await eu.ensure("az1")
    await us.ensure("az2")
    assert (await eu.read()).zone == "az1"
    assert (await us.read()).zone == "az2"
    assert eu.group == "eu"


# -- claim --------------------------------------------------------------------------------------


async def test_claim_moves_the_primary_and_adds_one_to_the_term(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    await lock.ensure("az1")
    taken = await lock.claim(source="az1", zone="az2", operation_id="op-1")
    assert (taken.zone, taken.term, taken.operation_id) == ("az2", 2, "op-1")
    assert (await lock.read()).record == taken
    back = await lock.claim(source="az2", zone="az1", operation_id="op-2")
    assert (back.zone, back.term, back.operation_id) == ("az1", 3, "op-2")
    assert back.nonce != taken.nonce


async def test_claim_records_whence_and_why_an_automatic_failover_took_it(
    lock: PrimaryLock,
) -> None:
    await lock.ensure("az1")
    taken = await lock.claim(source="az1", zone="az2", operation_id="op-1", automatic="unhealthy")
    stored = (await lock.read()).record
    assert stored is not None
    assert (stored.previous_zone, stored.automatic) == ("az1", "unhealthy")
    back = await lock.claim(source="az2", zone="az1", operation_id="op-2")
    assert (back.previous_zone, back.automatic) == ("az2", None)
    assert taken.previous_zone == "az1"


async def test_claim_resumed_with_the_same_operation_returns_the_record(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    await lock.ensure("az1")
    taken = await lock.claim(source="az1", zone="az2", operation_id="op-1")
    puts = store.calls["put"]
    assert await lock.claim(source="az1", zone="az2", operation_id="op-1") == taken
    observation = await lock.read()
    assert await lock.claim(
        source="az1", zone="az2", operation_id="op-1", expected=observation
    ) == (taken)
    assert store.calls["put"] == puts
    assert (await lock.read()).term == 2


async def test_claim_by_the_primary_zone_under_another_operation_is_refused(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    await lock.ensure("az1")
    await lock.claim(source="az1", zone="az2", operation_id="op-1")
    puts = store.calls["put"]
    with pytest.raises(PrimaryTaken) as taken:
        await lock.claim(source="az1", zone="az2", operation_id="op-2")
    assert (taken.value.zone, taken.value.term, taken.value.operation_id) == ("az2", 2, "op-1")
    assert store.calls["put"] == puts


async def test_claim_refused_when_a_third_zone_is_primary(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    await lock.ensure("az3")
    puts = store.calls["put"]
    with pytest.raises(PrimaryTaken) as taken:
        await lock.claim(source="az1", zone="az2", operation_id="op")
    assert (taken.value.zone, taken.value.term, taken.value.group) == ("az3", 1, "default")
    assert "az3" in str(taken.value)
    assert store.calls["put"] == puts
    assert (await lock.read()).zone == "az3"


async def test_lost_cas_is_never_retried_and_names_the_winner(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    await lock.ensure("az1")
    seen = await lock.read()
    won = await lock.claim(source="az1", zone="az2", operation_id="a", expected=seen)
    puts = store.calls["put"]
    with pytest.raises(PrimaryTaken) as taken:
        await lock.claim(source="az1", zone="az3", operation_id="b", expected=seen)
    assert (taken.value.zone, taken.value.term, taken.value.operation_id) == ("az2", 2, "a")
    assert store.calls["put"] == puts + 1  # one CAS, no second try
    assert (await lock.read()).record == won


async def test_stale_expectation_of_the_same_source_loses(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    """The record named az1 at term 1 when read; by the claim az1 is primary again at term 3."""
    await lock.ensure("az1")
    stale = await lock.read()
    await lock.claim(source="az1", zone="az2", operation_id="a")
    await lock.claim(source="az2", zone="az1", operation_id="b")
    with pytest.raises(PrimaryTaken) as taken:
        await lock.claim(source="az1", zone="az2", operation_id="c", expected=stale)
    assert (taken.value.zone, taken.value.term) == ("az1", 3)


async def test_claim_whose_response_was_lost_is_ours(store: FaultyStore, lock: PrimaryLock) -> None:
    await lock.ensure("az1")
    store.after = lose_put_responses
    taken = await lock.claim(source="az1", zone="az2", operation_id="op")
    store.after = _nothing
    assert (taken.zone, taken.term) == ("az2", 2)
    assert (await lock.read()).record == taken


async def test_claim_without_a_record_creates_it_above_the_logs_of_both_zones(
    store: FaultyStore, lock: PrimaryLock
) -> None:
    await write_log(store, "az1", term=3)
    await write_log(store, "az2", term=2)
    taken = await lock.claim(source="az1", zone="az2", operation_id="op")
    assert (taken.zone, taken.term, taken.operation_id) == ("az2", 4, "op")


async def test_claim_without_a_record_on_a_fresh_bucket_gives_term_one(lock: PrimaryLock) -> None:
    taken = await lock.claim(source="unknown", zone="az2", operation_id="op")
    assert (taken.zone, taken.term) == ("az2", 1)


async def test_claim_expecting_no_record_loses_to_a_concurrent_create(lock: PrimaryLock) -> None:
    absent = await lock.read()
    await lock.ensure("az1")
    with pytest.raises(PrimaryTaken) as taken:
        await lock.claim(source="az1", zone="az2", operation_id="op", expected=absent)
    assert (taken.value.zone, taken.value.term) == ("az1", 1)


async def test_claim_from_itself_is_a_programming_error(lock: PrimaryLock) -> None:
    with pytest.raises(ValueError, match="from itself"):
        await lock.claim(source="az1", zone="az1", operation_id="op")
    with pytest.raises(ValueError, match="must not contain '/'"):
        await lock.claim(source="az1", zone="a/b", operation_id="op")


async def test_term_only_grows_over_many_claims(lock: PrimaryLock) -> None:
    await lock.ensure("az1")
    zones = ["az1", "az2"]
    for n in range(1, 8):
        source, target = zones[(n - 1) % 2], zones[n % 2]
        record = await lock.claim(source=source, zone=target, operation_id=f"op-{n}")
        assert (record.zone, record.term) == (target, n + 1)
