"""Checkpoints: the catalog as of one log entry, so loading costs only the entries after it.

A checkpoint is one object, ``<zone>/checkpoints/<seq:020d>.jsonl.gz``: gzip-compressed JSON
lines, a header line (format, version, zone, seq, epoch, term), then the catalog, and a trailer
line with the number of lines between and the SHA-256 of every line before it. Version 4 writes
segments as blocks of packed columns (``["S", table, ...]``, see ``columns.py``: base64 arrays,
loaded without a Python object per segment), the other records one line each. Version 3 is the
same but for its blocks, all of :data:`~.columns.CHUNK` rows but a table's last, which version
4 does not promise (a checkpoint copies the chunks no change touched whole): a reader of
version 3 would refuse such blocks, hence the new number. Versions 3 and 1 (one line per
segment version, ``["s", ...]``) are still read. It is valid only if
the trailer is there and agrees, so a truncated or corrupt object (or one cut short by any
means) is ignored with a warning and the loader falls back to the previous checkpoint, or to
the raw log. Object writes are atomic on every backend, so a checkpoint being written while a
reader loads is either not visible yet or complete; the content for a given seq is fully
determined by the log, so two writers racing on the same name write equivalent objects.

Both directions stream: rows are encoded and compressed in batches, and parsed chunk by chunk,
in worker threads, so a million segments neither build one giant string nor block the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import zlib
from collections.abc import AsyncIterator
from typing import Any

from az_agent.drivers.errors import CorruptObject, NotFound
from az_agent.drivers.storage.base import ObjectInfo, ObjectStore
from az_agent.state.catalog import Catalog, CatalogSnapshot, refresh_catalog
from az_agent.state.clock import Clock, SystemClock
from az_agent.state.columns import CHUNK, SegmentColumns
from az_agent.state.errors import CheckpointInvalid, LogCorrupted
from az_agent.state.keys import LOG_SUFFIX, check_zone, checkpoint_key, log_prefix, parse_seq
from az_agent.state.log import checkpoint_seqs, entry_exists

log = logging.getLogger(__name__)

FORMAT = "az-agent-checkpoint"
VERSION = 4
READABLE_VERSIONS = (1, 3, 4)
"""Version 2 (columns without name separators) lived for an hour in development: refused."""
BATCH_ROWS = 5000
KEEP_CHECKPOINTS = 3
_GZIP = 31  # zlib wbits for a gzip container
_PIECE = 256 << 10  # inflate at most this much at once: bounded memory whatever the ratio
_BAD_CONTENT = (ValueError, TypeError, KeyError, IndexError, AttributeError, zlib.error)


def _line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


class _Encoder:
    """Turns rows into gzip bytes, counting and hashing the uncompressed lines."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(1, zlib.DEFLATED, _GZIP)  # chunks come compressed
        self._digest = hashlib.sha256()
        self._count = 0

    def header(self, header: dict[str, Any]) -> bytes:
        return self._add([_line(header)], rows=0)

    def records(self, snapshot: CatalogSnapshot, start: int, stop: int) -> bytes:
        return self._add([_line(r.to_row()) for r in snapshot.records[start:stop]], stop - start)

    def blocks(self, columns: SegmentColumns, chunks: range) -> bytes:
        lines: list[bytes] = []
        for chunk in chunks:
            header, raw = columns.block(chunk)
            lines += [_line(header), raw, b"\n"]
        return self._add(lines, len(chunks))

    def events(self, snapshot: CatalogSnapshot) -> bytes:
        lines = [_line(["e", event.to_json()]) for event in snapshot.events]
        return self._add(lines, len(lines))

    def trailer(self) -> bytes:
        line = _line({"trailer": True, "count": self._count, "sha256": self._digest.hexdigest()})
        return self._deflate.compress(line) + self._deflate.flush()

    def _add(self, lines: list[bytes], rows: int) -> bytes:
        data = b"".join(lines)
        self._digest.update(data)
        self._count += rows
        return self._deflate.compress(data)


async def _encode(
    snapshot: CatalogSnapshot, header: dict[str, Any], merged: dict[str, SegmentColumns | None]
) -> AsyncIterator[bytes]:
    """The checkpoint's gzip stream; fills ``merged`` with each table's merged columns."""
    encoder = _Encoder()
    yield await asyncio.to_thread(encoder.header, header)
    for table in snapshot.tables:
        columns = merged[table.table] = await asyncio.to_thread(table.merged)
        chunks = len(columns.name_chunks) if columns is not None else 0
        for first in range(0, chunks, BATCH_ROWS // CHUNK):
            assert columns is not None
            batch = range(first, min(first + BATCH_ROWS // CHUNK, chunks))
            yield await asyncio.to_thread(encoder.blocks, columns, batch)
    for start in range(0, len(snapshot.records), BATCH_ROWS):
        stop = min(start + BATCH_ROWS, len(snapshot.records))
        chunk = await asyncio.to_thread(encoder.records, snapshot, start, stop)
        if chunk:
            yield chunk
    yield await asyncio.to_thread(encoder.events, snapshot)
    yield await asyncio.to_thread(encoder.trailer)


async def write_checkpoint(
    store: ObjectStore, catalog: Catalog, *, clock: Clock | None = None
) -> ObjectInfo | None:
    """Write a checkpoint of ``catalog`` as of its ``last_seq``; None for an empty catalog.

    The catalog may keep changing meanwhile: an immutable snapshot is taken first. The
    segments merged for it replace the catalog's own layers when no segment changed meanwhile
    (memory goes back to packed columns).
    """
    snapshot = catalog.snapshot()
    if snapshot.seq == 0:
        return None
    header = {
        "format": FORMAT,
        "version": VERSION,
        "zone": snapshot.zone,
        "seq": snapshot.seq,
        "epoch": snapshot.epoch,
        "term": snapshot.term,
        "createdAt": (clock or SystemClock()).now().isoformat(),
    }
    key = checkpoint_key(snapshot.zone, snapshot.seq)
    merged: dict[str, SegmentColumns | None] = {}
    info = await store.put(key, _encode(snapshot, header, merged))
    catalog.checkpoint_seq = max(catalog.checkpoint_seq, snapshot.seq)
    compacted = len(merged) == len(snapshot.tables) and catalog.install(snapshot, merged)
    log.info(
        "zone %s: checkpoint at entry %d written (%d segment names, %d other records, %d bytes)%s",
        snapshot.zone,
        snapshot.seq,
        sum(c.name_count for c in merged.values() if c is not None),
        len(snapshot.records) + len(snapshot.events),
        info.size,
        "; catalog compacted" if compacted else "",
    )
    return info


async def prune_checkpoints(store: ObjectStore, zone: str, keep: int = KEEP_CHECKPOINTS) -> int:
    """Delete all but the newest ``keep`` checkpoints (log entries are never deleted here)."""
    if keep < 1:
        raise ValueError("keep at least one checkpoint")
    old = (await checkpoint_seqs(store, zone))[keep:]
    for seq in old:
        await store.delete(checkpoint_key(zone, seq))
    return len(old)


async def truncate_log(store: ObjectStore, zone: str) -> int:
    """Delete the log entries older than the oldest checkpoint kept; how many were deleted.

    Every checkpoint kept can still be replayed from (its own entry and those after it stay),
    so losing the newest checkpoints falls back to an older one as before. With no checkpoint
    the log is left alone. A reader that needs an entry deleted here finds a gap and raises
    ``LogCorrupted`` (never a silently shorter catalog): :func:`load_catalog` is the way in.
    """
    seqs = await checkpoint_seqs(store, zone)
    if not seqs:
        return 0
    oldest = seqs[-1]
    prefix = log_prefix(zone)
    doomed = [
        info.key
        async for info in store.list(prefix)
        if (seq := parse_seq(info.key, prefix, LOG_SUFFIX)) is not None and seq < oldest
    ]
    for key in doomed:
        with contextlib.suppress(NotFound):
            await store.delete(key)
    return len(doomed)


class _Decoder:
    """Inflates, splits, hashes and applies checkpoint lines; the last line is the trailer."""

    def __init__(self, zone: str, seq: int, key: str) -> None:
        self._zone, self._seq, self._key = zone, seq, key
        self._inflate = zlib.decompressobj(_GZIP)
        self._digest = hashlib.sha256()
        self._data = bytearray()  # inflated bytes not consumed yet, from _start on
        self._start = 0
        self._block: list[Any] | None = None  # a block header whose columns are awaited
        self._block_line = b""
        self._pending: bytes | None = None  # the newest complete line: maybe the trailer
        self._header: dict[str, Any] | None = None
        self._catalog = Catalog(zone)
        self._count = 0

    def feed(self, chunk: bytes) -> None:
        try:
            self._split(self._inflate.decompress(chunk, _PIECE))
            while self._inflate.unconsumed_tail:
                self._split(self._inflate.decompress(self._inflate.unconsumed_tail, _PIECE))
        except _BAD_CONTENT as exc:
            raise CheckpointInvalid(f"{self._key}: {exc}") from exc

    def _split(self, data: bytes) -> None:
        """Consume the complete lines and blocks in what has been inflated so far.

        A block (version 3) is a JSON line ``["S", ...]`` announcing how many raw bytes
        follow it, then those bytes and a line end; everything else is one JSON line.
        """
        self._data += data
        while self._block is not None or (end := self._data.find(b"\n", self._start)) >= 0:
            if self._block is not None:
                if not self._take_block(self._block):
                    break
                continue
            line = bytes(self._data[self._start : end])
            self._start = end + 1
            if self._pending is not None:
                self._process(self._pending)
                self._pending = None
            if self._header is not None and line.startswith(b'["S",'):
                block = json.loads(line)
                if not isinstance(block, list) or len(block) != 7 or not isinstance(block[3], int):
                    raise ValueError("malformed block header")
                self._block, self._block_line = block, line + b"\n"
            else:
                self._pending = line
        if self._start > len(self._data) // 2:
            del self._data[: self._start]
            self._start = 0

    def _take_block(self, block: list[Any]) -> bool:
        """Apply the awaited block if all its bytes are in; whether it was."""
        end = self._start + block[3]
        if len(self._data) <= end:
            return False
        if self._data[end] != ord("\n"):
            raise ValueError("a block is not followed by a line end")
        with memoryview(self._data) as view, view[self._start : end] as raw:
            self._digest.update(self._block_line)
            self._digest.update(raw)
            self._digest.update(b"\n")
            self._catalog.apply_block(block, raw)
        self._count += 1
        self._start = end + 1
        self._block = None
        return True

    def _process(self, line: bytes) -> None:
        self._digest.update(line)
        self._digest.update(b"\n")
        if self._header is None:
            self._header = self._check_header(json.loads(line))
        else:
            self._catalog.apply_row(json.loads(line))
            self._count += 1

    def _check_header(self, header: dict[str, Any]) -> dict[str, Any]:
        expected = (FORMAT, VERSION, self._zone, self._seq)
        found = (header.get("format"), header.get("version"), header.get("zone"), header.get("seq"))
        if found[1] in READABLE_VERSIONS:
            expected = (FORMAT, found[1], self._zone, self._seq)
        if found != expected:
            raise CheckpointInvalid(f"{self._key}: header {found}, expected {expected}")
        return header

    def finish(self) -> Catalog:
        try:
            self._split(self._inflate.flush())
            trailer = json.loads(self._pending) if self._pending is not None else None
        except _BAD_CONTENT as exc:
            raise CheckpointInvalid(f"{self._key}: {exc}") from exc
        unconsumed = len(self._data) > self._start or self._block is not None
        if not self._inflate.eof or unconsumed or self._header is None:
            raise CheckpointInvalid(f"{self._key}: truncated")
        if not isinstance(trailer, dict) or trailer.get("trailer") is not True:
            raise CheckpointInvalid(f"{self._key}: no trailer, the checkpoint is incomplete")
        if (trailer.get("count"), trailer.get("sha256")) != (
            self._count,
            self._digest.hexdigest(),
        ):
            raise CheckpointInvalid(f"{self._key}: trailer does not match the content")
        try:
            self._catalog.finish_restore()
        except _BAD_CONTENT as exc:
            raise CheckpointInvalid(f"{self._key}: {exc}") from exc
        self._catalog.last_seq = self._catalog.checkpoint_seq = self._seq
        self._catalog.epoch = int(self._header["epoch"])
        self._catalog.term = int(self._header.get("term", 0))  # absent before terms existed
        return self._catalog


async def read_checkpoint(store: ObjectStore, zone: str, seq: int) -> Catalog:
    """The catalog stored in checkpoint ``seq``; ``CheckpointInvalid`` unless it is intact."""
    key = checkpoint_key(check_zone(zone), seq)
    decoder = _Decoder(zone, seq, key)
    async with store.open(key) as reader:
        async for chunk in reader:
            await asyncio.to_thread(decoder.feed, chunk)
    return await asyncio.to_thread(decoder.finish)


async def load_catalog(store: ObjectStore, zone: str) -> Catalog:
    """The zone's catalog: newest valid checkpoint, then every entry after it.

    Unusable checkpoints are skipped with a warning. Raises ``LogCorrupted`` when entries a
    checkpoint vouches for are missing (a gap), rather than return a catalog that lacks them.
    """
    seqs = await checkpoint_seqs(store, zone)
    catalog: Catalog | None = None
    for seq in seqs:
        try:
            catalog = await read_checkpoint(store, zone, seq)
            break
        except (CheckpointInvalid, CorruptObject, NotFound) as exc:
            log.warning("zone %s: checkpoint %d unusable, trying an older one: %s", zone, seq, exc)
    catalog = catalog or Catalog(zone)
    read = await refresh_catalog(store, catalog)
    if seqs and seqs[0] > catalog.last_seq:
        if await entry_exists(store, zone, seqs[0]):
            raise LogCorrupted(
                f"zone {zone}: log replay stopped at entry {catalog.last_seq}, but entry "
                f"{seqs[0]} exists: entries are missing"
            )
        log.warning("zone %s: checkpoint %d is beyond the log's end; ignored", zone, seqs[0])
    log.info(
        "zone %s: catalog loaded up to entry %d (%d entries replayed after the checkpoint)",
        zone,
        catalog.last_seq,
        read,
    )
    return catalog
