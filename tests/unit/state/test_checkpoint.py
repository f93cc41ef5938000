"""Checkpoints: same catalog as the raw log, cheaper to load, and never trusted when damaged."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from az_agent.drivers.storage.base import Body, ObjectInfo
from az_agent.state import (
    Catalog,
    CheckpointInvalid,
    DumpDeletedPayload,
    DumpPayload,
    LogCorrupted,
    LogWriter,
    PausedPayload,
    Payload,
    ResumedPayload,
    SchemaPayload,
    TableConfigPayload,
    apply_committed,
    load_catalog,
    prune_checkpoints,
    read_checkpoint,
    refresh_catalog,
    write_checkpoint,
)
from az_agent.state.keys import checkpoint_key, dump_key, log_key, schema_key, table_config_key
from az_agent.state.log import checkpoint_seqs
from tests.fakeclock import FakeClock
from tests.unit.state.helpers import FaultyStore, file_store, segment

ZONE = "az1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    opened = await file_store(tmp_path / "bucket")
    yield opened
    await opened.close()


class History:
    """Writes a varied log through a real writer, one simulated minute per entry."""

    def __init__(self, store: FaultyStore) -> None:
        self.clock = FakeClock()
        self.writer = LogWriter(store, ZONE, 1, "writer", clock=self.clock)
        self.count = 0

    async def write(self, entries: int) -> None:
        if self.writer.next_seq is None:
            await self.writer.write_fence()
        for _ in range(entries):
            self.clock.advance(60)
            await self.writer.append(self._payload(self.count))
            self.count += 1

    def _payload(self, n: int) -> Payload:
        deleted = (self.writer.next_seq or 0) - 3  # the dump written three entries ago
        kinds: list[Callable[[], Payload]] = [
            lambda: segment(ZONE, f"seg{n % 7}", crc=str(n)),  # CRCs change: history grows
            lambda: segment(ZONE, f"rt{n}", table="events_REALTIME"),
            lambda: DumpPayload(
                database="configdb",
                key=dump_key(ZONE, "configdb", f"d{n}"),
                size=n,
                sha256="0" * 64,
                started_at=self.clock.now(),
                finished_at=self.clock.now(),
            ),
            lambda: TableConfigPayload(
                name="t", key=table_config_key(ZONE, "t", "1" * 64), sha256="1" * 64
            ),
            lambda: SchemaPayload(name="s", key=schema_key(ZONE, "s", "2" * 64), sha256="2" * 64),
            lambda: DumpDeletedPayload(database="configdb", dump_seq=deleted, key="x"),
            lambda: PausedPayload(epoch=1, newest_segment_seq=n),
            lambda: ResumedPayload(by="operator"),
        ]
        return kinds[n % len(kinds)]()


async def raw_catalog(store: FaultyStore) -> Catalog:
    catalog = Catalog(ZONE)
    await refresh_catalog(store, catalog)
    return catalog


def same(a: Catalog, b: Catalog) -> None:
    assert (a.last_seq, a.epoch) == (b.last_seq, b.epoch)
    assert list(a.rows()) == list(b.rows())
    assert (a.last_paused, a.last_fence, a.last_resumed) == (
        b.last_paused,
        b.last_fence,
        b.last_resumed,
    )


async def checkpointed(store: FaultyStore, history: History, *blocks: int) -> list[int]:
    """Write ``blocks`` of entries, a checkpoint after each; returns the checkpoint seqs."""
    seqs = []
    for block in blocks:
        await history.write(block)
        catalog = await load_catalog(store, ZONE)
        await write_checkpoint(store, catalog, clock=history.clock)
        seqs.append(catalog.last_seq)
    return seqs


async def test_checkpoint_loads_the_same_catalog_as_the_raw_log(store: FaultyStore) -> None:
    history = History(store)
    await checkpointed(store, history, 60)
    await history.write(17)
    raw = await raw_catalog(store)
    assert raw.segment_count > 0
    assert raw.dumps("configdb")
    assert raw.last_paused is not None
    assert raw.last_resumed is not None
    store.keys.clear()
    loaded = await load_catalog(store, ZONE)
    same(loaded, raw)
    log_reads = {key for op, key in store.keys if op == "get" and "/log/" in key}
    assert {log_key(ZONE, seq) for seq in range(62, 79)} <= log_reads
    assert min(log_reads) == log_key(ZONE, 62)  # nothing the checkpoint already covers
    again = await read_checkpoint(store, ZONE, 61)
    assert again.last_seq == again.checkpoint_seq == 61
    assert (loaded.checkpoint_seq, raw.checkpoint_seq) == (61, 0)


async def test_empty_catalog_writes_no_checkpoint(store: FaultyStore) -> None:
    assert await write_checkpoint(store, Catalog(ZONE)) is None
    assert (await load_catalog(store, ZONE)).last_seq == 0


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def without_trailer(data: bytes) -> bytes:
    lines = gzip.decompress(data).splitlines(keepends=True)
    return gzip.compress(b"".join(lines[:-1]))


def tampered_row(data: bytes) -> bytes:
    content = bytearray(gzip.decompress(data))
    start = content.index(b'["S",')
    line_end = content.index(b"\n", start)
    size = json.loads(content[start:line_end])[3]
    content[line_end + size] ^= 1  # the last byte of a segment name changed, trailer kept
    return gzip.compress(bytes(content))


def garbage(data: bytes) -> bytes:
    return b"\x00not a checkpoint" + data[:10]


def wrong_header(data: bytes) -> bytes:
    return gzip.compress(gzip.decompress(data).replace(b'"zone":"az1"', b'"zone":"az2"', 1))


@pytest.mark.parametrize(
    "damage", [truncated, without_trailer, tampered_row, garbage, wrong_header]
)
async def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    store: FaultyStore, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    history = History(store)
    first, second = await checkpointed(store, history, 30, 30)
    await history.write(5)
    data, _ = await store.get(checkpoint_key(ZONE, second))
    await store.put(checkpoint_key(ZONE, second), damage(data))  # type: ignore[operator]
    with pytest.raises(CheckpointInvalid):
        await read_checkpoint(store, ZONE, second)
    store.keys.clear()
    with caplog.at_level(logging.WARNING):
        loaded = await load_catalog(store, ZONE)
    first_read = min(int(k.rsplit("/", 1)[1][:-5]) for _, k in store.keys if "/log/" in k)
    assert first_read == first + 1  # replayed from the previous checkpoint, not from 1
    same(loaded, await raw_catalog(store))
    assert f"checkpoint {second} unusable" in caplog.text


async def test_bit_rot_in_the_stored_object_falls_back(tmp_path: Path, store: FaultyStore) -> None:
    history = History(store)
    _, second = await checkpointed(store, history, 20, 20)
    path = tmp_path / "bucket" / checkpoint_key(ZONE, second)
    raw = bytearray(path.read_bytes())
    mtime = path.stat().st_mtime_ns  # kept: bit rot does not touch it
    raw[-1] ^= 0xFF  # the store's recorded SHA-256 no longer matches
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(mtime, mtime))
    same(await load_catalog(store, ZONE), await raw_catalog(store))


async def test_without_any_valid_checkpoint_the_raw_log_is_used(store: FaultyStore) -> None:
    history = History(store)
    (only,) = await checkpointed(store, history, 25)
    await store.put(checkpoint_key(ZONE, only), b"junk")
    same(await load_catalog(store, ZONE), await raw_catalog(store))


async def test_missing_entries_under_a_checkpoint_are_reported(store: FaultyStore) -> None:
    history = History(store)
    (only,) = await checkpointed(store, history, 25)
    await store.put(checkpoint_key(ZONE, only), b"junk")
    await store.delete(log_key(ZONE, 10))
    with pytest.raises(LogCorrupted):
        await load_catalog(store, ZONE)


async def test_checkpoint_written_while_loading_is_safe(store: FaultyStore) -> None:
    """A checkpoint stuck half-way through its upload is invisible; loads stay correct."""
    history = History(store)
    await checkpointed(store, history, 40)
    await history.write(300)
    catalog = await raw_catalog(store)
    gate, started = asyncio.Event(), asyncio.Event()
    inner_put = store.inner.put

    async def slow_put(
        key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        assert not isinstance(body, bytes)

        async def held() -> AsyncIterator[bytes]:
            async for chunk in body:
                yield chunk
                started.set()
                await gate.wait()

        return await inner_put(key, held(), if_none_match=if_none_match, if_match=if_match)

    store.inner.put = slow_put  # type: ignore[method-assign]
    writing = asyncio.create_task(write_checkpoint(store, catalog))
    await started.wait()
    for _ in range(3):
        same(await load_catalog(store, ZONE), catalog)
    gate.set()
    await writing
    store.inner.put = inner_put  # type: ignore[method-assign]
    loads = await asyncio.gather(*(load_catalog(store, ZONE) for _ in range(3)))
    for loaded in loads:
        same(loaded, catalog)
    assert (await checkpoint_seqs(store, ZONE))[0] == catalog.last_seq


async def test_a_catalog_changing_during_the_write_is_checkpointed_as_of_its_snapshot(
    store: FaultyStore,
) -> None:
    history = History(store)
    await history.write(500)
    catalog = await raw_catalog(store)
    expected = list(catalog.rows())
    writing = asyncio.create_task(write_checkpoint(store, catalog))
    await asyncio.sleep(0)
    await history.write(50)
    await refresh_catalog(store, catalog)  # the live catalog moves on meanwhile
    info = await writing
    assert info is not None
    assert list((await read_checkpoint(store, ZONE, 501)).rows()) == expected
    assert (catalog.checkpoint_seq, catalog.last_seq) == (501, 551)  # as of its snapshot


async def test_prune_keeps_the_newest_checkpoints(store: FaultyStore) -> None:
    history = History(store)
    seqs = await checkpointed(store, history, 3, 3, 3, 3, 3)
    assert await prune_checkpoints(store, ZONE, keep=2) == 3
    assert await checkpoint_seqs(store, ZONE) == sorted(seqs, reverse=True)[:2]
    assert (await raw_catalog(store)).last_seq == seqs[-1]  # no log entry was deleted


async def test_apply_committed_fills_in_entries_the_writer_stepped_over(
    store: FaultyStore,
) -> None:
    old, new = LogWriter(store, ZONE, 1, "old"), LogWriter(store, ZONE, 2, "new")
    await old.write_fence()
    catalog = await load_catalog(store, ZONE)  # the new leader loads, then the old one goes on
    await old.append(segment(ZONE, "last-of-old"))
    fence = await new.write_fence()
    await apply_committed(store, catalog, fence)
    mine = await new.append(segment(ZONE, "first-of-new"))
    await apply_committed(store, catalog, mine)
    assert sorted(s.name for s in catalog.segments()) == ["first-of-new", "last-of-old"]
    same(catalog, await raw_catalog(store))
