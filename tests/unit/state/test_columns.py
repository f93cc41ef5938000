"""Packed segment columns: every record round-trips, old checkpoints load, compaction is
invisible to queries."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from az_agent.state import (
    Catalog,
    LogEntry,
    SegmentDeletedPayload,
    SegmentPayload,
    SegmentRecord,
    SegmentsPurgedPayload,
    load_catalog,
    read_checkpoint,
    write_checkpoint,
)
from az_agent.state.checkpoint import FORMAT
from az_agent.state.columns import CHUNK
from az_agent.state.keys import checkpoint_key, log_key, segment_key
from tests.unit.state.helpers import FaultyStore, file_store

ZONE = "az1"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    opened = await file_store(tmp_path / "bucket")
    yield opened
    await opened.close()


def odd_segment(n: int) -> SegmentPayload:
    """Values of every shape a column may not hold as such."""
    table = ["metrics_OFFLINE", "events_REALTIME", "logs_OFFLINE"][n % 3]
    name = [f"seg{n % 11}", f"sg{n % 5}", f"x{n % 3}"][n % 3]
    crc = [str(1000 + n), f"00{n}", "-1", "abc", str(2**70)][n % 5]
    sha = hashlib.sha256(str(n).encode()).hexdigest()
    if n % 7 == 0:
        sha = "not-hex"
    key = segment_key(ZONE, table, name, crc) if n % 6 else f"{ZONE}/segments/other/{n}.tar.gz"
    realtime = table.endswith("_REALTIME")
    return SegmentPayload(
        table=table,
        table_type="REALTIME" if realtime else "OFFLINE",
        segment=name,
        crc=crc,
        size=n,
        sha256=sha,
        key=key,
        start_time_ms=None if n % 4 == 0 else n,
        end_time_ms=n + 1,
        commit_time_ms=None,
        backed_up_at=T0,
        partition=n % 3 if realtime else None,
        start_offset=[str(n), f"{n}:x", None][n % 3] if realtime else None,
        end_offset=str(n * 2) if realtime else None,
    )


class History:
    def __init__(self) -> None:
        self.entries: list[LogEntry] = []

    def add(self, payload: object) -> LogEntry:
        seq = len(self.entries) + 1
        entry = LogEntry.model_validate(
            {
                "seq": seq,
                "epoch": 1,
                "writer": "w",
                "nonce": str(seq),
                "time": T0 + timedelta(minutes=seq),
                "payload": payload,
            }
        )
        self.entries.append(entry)
        return entry

    def random(self, count: int, rng: random.Random) -> None:
        live: list[tuple[str, str]] = []
        deleted: list[tuple[str, str]] = []
        for _ in range(count):
            roll = rng.random()
            if roll < 0.7 or not live:
                payload = odd_segment(rng.randrange(60))
                self.add(payload)
                live.append((payload.table, payload.segment))
            elif roll < 0.85:
                table, name = rng.choice(live)
                self.add(SegmentDeletedPayload(table=table, segment=name))
                deleted.append((table, name))
            elif deleted:
                self.add(SegmentsPurgedPayload(segments=rng.sample(deleted, min(2, len(deleted)))))
            else:
                self.add(odd_segment(rng.randrange(60)))

    def catalog(self, upto: int | None = None) -> Catalog:
        catalog = Catalog(ZONE)
        for entry in self.entries[:upto]:
            catalog.apply(entry)
        return catalog


def versions(catalog: Catalog, record: SegmentRecord) -> list[SegmentRecord]:
    return catalog.versions(record.table, record.name)


def fast_answers(catalog: Catalog) -> object:
    """The answers read from the columns without records, checked against the records'."""
    as_of = T0 + timedelta(minutes=40)
    records = catalog.segments()
    newest = catalog.newest_segment_seq()
    assert newest == max((r.seq for r in records), default=None)
    crcs = {t: catalog.segment_crcs(t) for t in catalog.tables()}
    assert crcs == {t: {r.name: r.crc for r in catalog.segments(table=t)} for t in catalog.tables()}
    for table in catalog.tables():
        for name in catalog.segment_names(table):
            record = catalog.segment(table, name)
            assert crcs[table].get(name) == (None if record is None else record.crc)
    for when in (None, as_of, T0):
        assert catalog.live_tables(when) == sorted({r.table for r in catalog.segments(when)})
    return newest, crcs


def answers(catalog: Catalog) -> object:
    """Everything a caller can ask about segments."""
    as_of = T0 + timedelta(minutes=40)
    tables = catalog.tables()
    current = sorted(catalog.segments(), key=lambda r: (r.table, r.name))
    return (
        fast_answers(catalog),
        list(catalog.rows()),
        catalog.segment_count,
        tables,
        current,
        sorted(catalog.segments(as_of), key=lambda r: (r.table, r.name)),
        {t: sorted(catalog.segment_names(t)) for t in tables},
        {t: sorted(catalog.segment_names(t) - {"seg1", "x0"}) for t in tables},
        {t: ("seg1" in catalog.segment_names(t), len(catalog.segment_names(t))) for t in tables},
        [catalog.versions(r.table, r.name) for r in current],
        [catalog.segment(r.table, r.name, as_of) for r in current],
        sorted(r.object_key for t in tables for r in catalog.segments(table=t)),
        [catalog.references(v.object_key) for r in current for v in versions(catalog, r)],
        catalog.references(f"{ZONE}/segments/other/0.tar.gz"),
        catalog.deletions(),
    )


@pytest.mark.parametrize("seed", range(6))
async def test_checkpoint_round_trip_with_odd_values(store: FaultyStore, seed: int) -> None:
    history = History()
    history.random(120, random.Random(seed))
    catalog = history.catalog(80)
    await write_checkpoint(store, catalog)
    for entry in history.entries[80:]:
        catalog.apply(entry)
    loaded = await read_checkpoint(store, ZONE, 80)
    assert answers(loaded) == answers(history.catalog(80))
    for entry in history.entries[80:]:
        loaded.apply(entry)
    raw = history.catalog()
    assert answers(loaded) == answers(raw)
    assert answers(catalog) == answers(raw)  # compacted at the checkpoint, then applied on
    await write_checkpoint(store, loaded)
    assert answers(await load_catalog(store, ZONE)) == answers(raw)


async def test_a_checkpoint_compacts_the_catalog_it_was_taken_of(store: FaultyStore) -> None:
    history = History()
    history.random(60, random.Random(7))
    catalog = history.catalog()
    before = answers(catalog)
    assert catalog._added
    await write_checkpoint(store, catalog)
    assert not catalog._added
    assert not catalog._hidden
    assert answers(catalog) == before


async def test_a_catalog_changed_during_the_merge_is_not_compacted(store: FaultyStore) -> None:
    history = History()
    history.random(40, random.Random(8))
    catalog = history.catalog(30)
    snapshot = catalog.snapshot()
    for entry in history.entries[30:]:
        catalog.apply(entry)
    merged = {t.table: t.merged() for t in snapshot.tables}
    assert catalog._changes != snapshot.changes
    assert not catalog.install(snapshot, merged)
    assert answers(catalog) == answers(history.catalog())


async def test_a_version_1_checkpoint_still_loads(store: FaultyStore) -> None:
    """What the previous release wrote: one JSON line per record, version 1."""
    history = History()
    history.random(90, random.Random(3))
    raw = history.catalog()
    lines = [json.dumps(row, separators=(",", ":")).encode() + b"\n" for row in raw.rows()]
    header = {"format": FORMAT, "version": 1, "zone": ZONE, "seq": 90, "epoch": 1, "term": 0}
    body = [json.dumps(header, separators=(",", ":")).encode() + b"\n", *lines]
    digest = hashlib.sha256(b"".join(body)).hexdigest()
    trailer = {"trailer": True, "count": len(lines), "sha256": digest}
    body.append(json.dumps(trailer, separators=(",", ":")).encode() + b"\n")
    await store.put(checkpoint_key(ZONE, 90), gzip.compress(b"".join(body)))
    for entry in history.entries:  # the log the checkpoint stands for
        await store.put(log_key(ZONE, entry.seq), entry.encode())
    loaded = await load_catalog(store, ZONE)
    assert loaded.last_seq == 90
    assert answers(loaded) == answers(raw)


async def test_tables_of_many_chunks(store: FaultyStore) -> None:
    """Hundreds of names per table: chunk boundaries, merges across them, lookups in each."""
    history = History()
    rng = random.Random(11)
    for n in range(900):
        history.add(odd_segment(n) if n % 5 == 0 else plain_segment(rng.randrange(700)))
    catalog = history.catalog(700)
    await write_checkpoint(store, catalog)
    for n in range(300):
        name = f"s{rng.randrange(700):04d}"
        history.add(SegmentDeletedPayload(table="metrics_OFFLINE", segment=name))
        if n % 3 == 0:
            history.add(SegmentsPurgedPayload(segments=[("metrics_OFFLINE", name)]))
    for entry in history.entries[700:]:
        catalog.apply(entry)
    raw = history.catalog()
    assert answers(catalog) == answers(raw)
    loaded = await read_checkpoint(store, ZONE, 700)
    for entry in history.entries[700:]:
        loaded.apply(entry)
    assert answers(loaded) == answers(raw)
    await write_checkpoint(store, loaded)
    assert answers(await load_catalog(store, ZONE)) == answers(raw)


def plain_segment(n: int) -> SegmentPayload:
    crc = str(n * 7 % 13)
    name = f"s{n:04d}"
    return SegmentPayload(
        table="metrics_OFFLINE",
        table_type="OFFLINE",
        segment=name,
        crc=crc,
        size=n,
        sha256=hashlib.sha256(name.encode()).hexdigest(),
        key=segment_key(ZONE, "metrics_OFFLINE", name, crc),
        commit_time_ms=n,
        backed_up_at=T0,
    )


async def test_a_following_catalog_packs_its_new_segments(
    store: FaultyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("az_agent.state.catalog.COMPACT_AFTER", 10)
    history = History()
    history.random(200, random.Random(5))
    for entry in history.entries:
        await store.put(log_key(ZONE, entry.seq), entry.encode())
    loaded = await load_catalog(store, ZONE)  # no checkpoint: the raw log, then packed
    assert loaded.loose == 0
    assert answers(loaded) == answers(history.catalog())


async def test_the_newest_seq_skips_what_segments_leaves_out(store: FaultyStore) -> None:
    """Packed rows deleted, purged (hidden) or refreshed since the checkpoint are not the
    newest, whichever chunk they sit in; segments added since are."""
    history = History()
    for n in range(600):  # three chunks; names in another order than seqs
        history.add(plain_segment(n * 37 % 600))
    catalog = history.catalog()
    await write_checkpoint(store, catalog)
    assert not catalog._added

    def step(payload: object, expected: int) -> None:
        catalog.apply(history.add(payload))
        assert catalog.newest_segment_seq() == expected
        assert max(r.seq for r in catalog.segments()) == expected

    def name(seq: int) -> str:
        return f"s{(seq - 1) * 37 % 600:04d}"

    assert len({int(name(seq)[1:]) // 256 for seq in (597, 598, 599, 600)}) > 1
    step(SegmentDeletedPayload(table="metrics_OFFLINE", segment=name(600)), 599)
    step(SegmentsPurgedPayload(segments=[("metrics_OFFLINE", name(600))]), 599)
    step(SegmentDeletedPayload(table="metrics_OFFLINE", segment=name(599)), 598)
    step(SegmentsPurgedPayload(segments=[("metrics_OFFLINE", name(599))]), 598)
    key = segment_key(ZONE, "metrics_OFFLINE", "s0003", "99")
    step(plain_segment(3).model_copy(update={"crc": "99", "key": key}), 605)  # a refresh
    step(SegmentDeletedPayload(table="metrics_OFFLINE", segment="s0003"), 598)
    assert answers(catalog) == answers(history.catalog())


def named_segment(name: str, crc: int | str) -> SegmentPayload:
    key = segment_key(ZONE, "metrics_OFFLINE", name, str(crc))
    return plain_segment(0).model_copy(update={"segment": name, "crc": str(crc), "key": key})


async def test_a_checkpoint_rebuilds_only_the_chunks_a_change_falls_in(
    store: FaultyStore,
) -> None:
    """Checkpoints after a few changes each: untouched chunks are copied whole (the same
    compressed bytes, extras carried along), the answers stay those of the raw log, chunks
    stay mostly full. A name's 300 versions span chunks; it is purged in the first round."""
    history = History()
    for n in range(4000):  # every 50th with a CRC kept in extras
        history.add(named_segment(f"s{n * 2:05d}", f"0{n}" if n % 50 == 7 else n))
    for n in range(300):
        history.add(named_segment("s01001", n))
    catalog = history.catalog()
    await write_checkpoint(store, catalog)
    rng = random.Random(4)
    short = False
    for purged in ("s01001", *(f"s{rng.randrange(4000) * 2:05d}" for _ in range(4))):
        before = catalog._columns["metrics_OFFLINE"]
        for _ in range(3):
            n = rng.randrange(8000)
            history.add(named_segment(f"s{n:05d}", rng.randrange(10**6)))  # new or refreshed
        first = before.name(before.starts[rng.randrange(1, len(before.number_chunks))])
        history.add(named_segment(first, rng.randrange(10**6)))  # a chunk's first, refreshed
        history.add(SegmentDeletedPayload(table="metrics_OFFLINE", segment=purged))
        history.add(SegmentsPurgedPayload(segments=[("metrics_OFFLINE", purged)]))
        history.add(odd_segment(3).model_copy(update={"table": "metrics_OFFLINE"}))
        for entry in history.entries[catalog.last_seq :]:
            catalog.apply(entry)
        await write_checkpoint(store, catalog)
        after = catalog._columns["metrics_OFFLINE"]
        short |= not after._aligned
        shared = {id(chunk) for chunk in before.number_chunks}
        kept = sum(id(chunk) in shared for chunk in after.number_chunks)
        assert kept >= len(before.number_chunks) - 2 * 7
        assert len(after) / len(after.number_chunks) >= CHUNK / 2
        raw = history.catalog()
        assert list(catalog.rows()) == list(raw.rows())
        assert list((await load_catalog(store, ZONE)).rows()) == list(raw.rows())
    assert answers(catalog) == answers(raw)
    assert short  # chunks of fewer rows in the middle were written and loaded


async def test_a_version_3_checkpoint_still_loads(
    store: FaultyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 3 (blocks of CHUNK rows but the last) is read by the same code."""
    history = History()
    for n in range(300):
        history.add(odd_segment(n) if n % 5 == 0 else plain_segment(n))
    monkeypatch.setattr("az_agent.state.checkpoint.VERSION", 3)
    await write_checkpoint(store, history.catalog())
    monkeypatch.undo()
    loaded = await read_checkpoint(store, ZONE, 300)
    assert answers(loaded) == answers(history.catalog())


async def test_a_short_chunk_is_topped_up_by_its_neighbour(store: FaultyStore) -> None:
    """A chunk emptied by purges, then the rest of a split neighbour: one chunk, not two."""
    history = History()
    for n in range(4 * CHUNK):
        history.add(named_segment(f"s{n:05d}", n))
    catalog = history.catalog()
    await write_checkpoint(store, catalog)
    purged = [("metrics_OFFLINE", f"s{n:05d}") for n in range(2 * CHUNK, 2 * CHUNK + 200)]
    for table, name in purged:
        history.add(SegmentDeletedPayload(table=table, segment=name))
    history.add(SegmentsPurgedPayload(segments=purged))
    history.add(named_segment("s00300x", 1))  # one more row in the chunk before: split
    for upto in (len(history.entries) - 1, len(history.entries)):
        for entry in history.entries[catalog.last_seq : upto]:
            catalog.apply(entry)
        await write_checkpoint(store, catalog)
    columns = catalog._columns["metrics_OFFLINE"]
    sizes = [b - a for a, b in itertools.pairwise(columns.starts)]
    assert sizes == [CHUNK, CHUNK // 2 + 1, CHUNK // 2 + CHUNK - 200, CHUNK]
    assert all(a + b > CHUNK for a, b in itertools.pairwise(sizes))
    assert list(catalog.rows()) == list(history.catalog().rows())
