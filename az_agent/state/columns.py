"""A table's segment versions packed in columns: a million segments in ~70 MB, not ~550.

A :class:`SegmentColumns` holds the versions of one table as they stood at a checkpoint (or at
the last compaction): raw SHA-256 digests and CRCs as integers in flat arrays; names (UTF-8,
each followed by a line end) and the row-major packed numbers (the 64 bytes
:class:`SegmentRecord` keeps) zlib-compressed in chunks of :data:`CHUNK` rows (fewer where a
merge copied untouched chunks whole around a change), the unit a checkpoint stores them in
too, so loading copies them without recompressing. Neighbouring rows
are alike (names sorted, times and sequence numbers close), so these compress about 4x; reading
a row inflates its chunk (tens of microseconds; the last chunk read is kept). There is no
Python object per segment; a :class:`SegmentRecord` is built when asked for. Rows are sorted by
name, a name's versions consecutive, oldest first, its current version flagged ``last``.
Values that do not fit a column (a CRC that is not a canonical integer, a non-hex digest, a key
that is not the canonical one, textual offsets) go to a sparse ``extras`` map, so every record
round-trips.

Columns are never changed once built (a checkpoint writer reads them from a thread); the
catalog keeps later changes beside them and folds them in by building new columns.
"""

from __future__ import annotations

import bisect
import itertools
import sys
import zlib
from array import array
from collections.abc import Collection, Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any

from az_agent.state.backups import NUMBERS_SIZE, SegmentRecord

CHUNK = 256
"""Rows per compressed chunk, and per checkpoint block."""
_LEVEL = 1  # zlib level of the chunks: fast to write at every checkpoint, ~4x anyway
NONE = -(2**63)
"""Column value for None (partition, offsets) and for "see extras" (CRC)."""
_TYPES = ("OFFLINE", "REALTIME")
_OTHER_TYPE = 2
_HEX = frozenset("0123456789abcdef")
_WORDS = NUMBERS_SIZE // 8
_SEQ = 4  # the log sequence number's place among a row's packed numbers (see backups.py)


def _int_of(text: str | None) -> int | None:
    """``text`` as an int when it is exactly an int's canonical decimal form (and fits)."""
    if text is None or not text or len(text) > 19:
        return None
    digits = text[1:] if text[0] == "-" else text
    if not digits.isdigit() or not digits.isascii() or (len(digits) > 1 and digits[0] == "0"):
        return None
    value = int(text)
    return None if value == NONE or text == "-0" else value


def _le(values: array[int]) -> bytes:
    """An int64 array's bytes, little-endian whatever the machine."""
    if sys.byteorder != "little":
        values = array("q", values)
        values.byteswap()
    return values.tobytes()


def _ints(data: bytes | memoryview, typecode: str = "q") -> array[int]:
    """The int64 (or ``typecode``) array in little-endian ``data``."""
    values = array(typecode)
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values


class SegmentColumns:
    """The packed versions of one table; see the module docstring."""

    __slots__ = (
        "_aligned", "_index", "_mask", "_names", "_numbers", "crcs", "digests", "ends", "extras",
        "ints", "last", "name_chunks", "name_count", "number_chunks", "starts", "table", "types",
    )  # fmt: skip

    def __init__(
        self,
        table: str,
        name_chunks: list[bytes],
        ends: array[int],
        crcs: array[int],
        digests: bytearray,
        number_chunks: list[bytes],
        types: bytearray,
        last: bytearray,
        ints: array[int] | None,
        extras: dict[int, dict[str, Any]],
        starts: array[int] | None = None,
    ) -> None:
        self.table = table
        self.name_chunks = name_chunks
        self.ends = ends  # where each name ends in its chunk's names
        self.crcs = crcs
        self.digests = digests
        self.number_chunks = number_chunks
        self.types = types
        self.last = last
        self.ints = ints
        self.extras = extras
        if starts is None:
            starts = array("q", range(0, len(crcs), CHUNK))
            starts.append(len(crcs))
        self.starts = starts  # each chunk's first row, then the row count
        self._aligned = all(b - a == CHUNK for a, b in itertools.pairwise(starts[:-1]))
        self.name_count = last.count(1)
        self._index: array[int] | None = None
        self._mask = 0
        # the last chunk inflated, replaced whole (a checkpoint writer thread reads too)
        self._names: tuple[int, bytes] = (-1, b"")
        self._numbers: tuple[int, bytes] = (-1, b"")

    def __len__(self) -> int:
        return len(self.crcs)

    def chunk_of(self, row: int) -> int:
        """The chunk holding ``row``: chunks have :data:`CHUNK` rows but where a merge copied
        its neighbours whole around a change (see :func:`merge`)."""
        return row // CHUNK if self._aligned else bisect.bisect_right(self.starts, row) - 1

    def rows(self, chunk: int) -> range:
        return range(self.starts[chunk], self.starts[chunk + 1])

    def _chunk_names(self, chunk: int) -> bytes:
        cached = self._names
        if cached[0] != chunk:
            cached = self._names = (chunk, zlib.decompress(self.name_chunks[chunk]))
        return cached[1]

    def number_bytes(self, row: int) -> bytes:
        chunk = self.chunk_of(row)
        position = row - self.starts[chunk]
        cached = self._numbers
        if cached[0] != chunk:
            cached = self._numbers = (chunk, zlib.decompress(self.number_chunks[chunk]))
        return cached[1][position * NUMBERS_SIZE : (position + 1) * NUMBERS_SIZE]

    def name_bytes(self, row: int) -> bytes:
        chunk = self.chunk_of(row)
        names = self._chunk_names(chunk)
        return names[self.ends[row - 1] + 1 if row != self.starts[chunk] else 0 : self.ends[row]]

    def name(self, row: int) -> str:
        return self.name_bytes(row).decode()

    def record(self, zone: str, row: int) -> SegmentRecord:
        """The version in ``row`` as a record (equal to the one the columns were built from)."""
        extra = self.extras.get(row)
        crc = str(self.crcs[row]) if self.crcs[row] != NONE else ""
        digest = self.digests[row * 32 : row * 32 + 32].hex()
        code = self.types[row]
        table_type = _TYPES[code] if code != _OTHER_TYPE else ""
        partition = start = end = None
        if self.ints is not None:
            p, s, e = self.ints[row * 3 : row * 3 + 3]
            partition = None if p == NONE else p
            start = None if s == NONE else str(s)
            end = None if e == NONE else str(e)
        key_override = None
        if extra is not None:
            crc = extra.get("crc", crc)
            digest = extra.get("sha256", digest)
            table_type = extra.get("tableType", table_type)
            start = extra.get("startOffset", start)
            end = extra.get("endOffset", end)
            key_override = extra.get("key")
        return SegmentRecord(
            zone, self.table, table_type, self.name(row), crc, digest, key_override, partition,
            start, end, self.number_bytes(row),
        )  # fmt: skip

    # -- lookups --------------------------------------------------------------------------

    def current_row(self, name: str) -> int | None:
        """The row of ``name``'s current version, or None. The hash index is built on the
        first lookup, so a load that only lists (an activation) never pays for it; it keeps
        32 bits of each name's hash beside its row, so a miss or a collision inflates no
        chunk."""
        index = self._index if self._index is not None else self._build_index()
        key = name.encode()
        hashed = hash(key)
        mark = (hashed >> 32) & 0x7FFFFFFF
        slot = hashed & self._mask
        while (row := index[2 * slot]) != -1:
            if index[2 * slot + 1] == mark and self.name_bytes(row) == key:
                return row
            slot = (slot + 1) & self._mask
        return None

    def _build_index(self) -> array[int]:
        size = 8
        while size < 2 * self.name_count:
            size *= 2
        mask = size - 1
        index = array("i", [-1, 0]) * size  # (row, hash mark) per slot
        for row in self.current_rows():
            hashed = hash(self.name_bytes(row))
            slot = hashed & mask
            while index[2 * slot] != -1:
                slot = (slot + 1) & mask
            index[2 * slot] = row
            index[2 * slot + 1] = (hashed >> 32) & 0x7FFFFFFF
        self._index, self._mask = index, mask
        return index

    def current_rows(self) -> Iterator[int]:
        find, row = self.last.find, 0
        while (row := find(1, row)) != -1:
            yield row
            row += 1

    def current_names(self) -> Iterator[str]:
        """Every current name, a chunk at a time at C speed (a poll sets 100,000 of them
        against a listing): a chunk's names are separated by line ends."""
        for chunk in range(len(self.name_chunks)):
            rows = self.rows(chunk)
            names = self._chunk_names(chunk).decode().split("\n")
            yield from itertools.compress(names, self.last[rows.start : rows.stop])

    def current_crcs(self) -> Iterator[tuple[str, str]]:
        """``(name, CRC)`` of every current version, by name, a chunk at a time at C speed (a
        discovery scan sets a whole table's against the controller's): the CRC as
        :meth:`record` gives it, extras honoured."""
        odd = {self.chunk_of(row) for row, extra in self.extras.items() if "crc" in extra}
        for chunk in range(len(self.name_chunks)):
            start, stop = self.starts[chunk], self.starts[chunk + 1]
            flags = self.last[start:stop]
            names = self._chunk_names(chunk).decode().split("\n")
            if chunk not in odd:  # then no CRC of the chunk is NONE either (see add)
                crcs = map(str, self.crcs[start:stop])
                yield from itertools.compress(zip(names, crcs, strict=False), flags)
                continue
            for position in itertools.compress(range(len(flags)), flags):
                row = start + position
                crc = str(self.crcs[row]) if self.crcs[row] != NONE else ""
                yield names[position], self.extras.get(row, {}).get("crc", crc)

    def newest_seq(self, skip: AbstractSet[str]) -> int | None:
        """The highest log sequence number of a current version whose name is not in
        ``skip``, read from the packed numbers (no record built): the highest of each
        chunk first, then, when ``skip`` is not empty, the chunks in descending order of
        it, rows by seq, until one is not skipped."""
        tops: list[tuple[int, int]] = []
        for chunk in range(len(self.number_chunks)):
            flags = self.last[self.starts[chunk] : self.starts[chunk + 1]]
            top = max(itertools.compress(self._seqs(chunk), flags), default=None)
            if top is not None:
                tops.append((top, chunk))
        if not skip:
            return max(tops)[0] if tops else None
        best: int | None = None
        for top, chunk in sorted(tops, reverse=True):
            if best is not None and top <= best:
                break
            start = self.starts[chunk]
            rows = zip(self._seqs(chunk), itertools.count(start), strict=False)
            flags = self.last[start : self.starts[chunk + 1]]
            for seq, row in sorted(itertools.compress(rows, flags), reverse=True):
                if best is not None and seq <= best:
                    break
                if self.name(row) not in skip:
                    best = seq
                    break
        return best

    def _seqs(self, chunk: int) -> array[int]:
        """The log sequence numbers of the chunk's rows."""
        return _ints(zlib.decompress(self.number_chunks[chunk]))[_SEQ::_WORDS]

    def version_rows(self, current: int) -> range:
        """Rows of every version of the name whose current version is in ``current``."""
        first = current
        while first > 0 and not self.last[first - 1]:
            first -= 1
        return range(first, current + 1)

    # -- checkpoint blocks ----------------------------------------------------------------

    def block(self, chunk: int) -> tuple[list[Any], bytes]:
        """Chunk ``chunk`` as a checkpoint block: a JSON header ``["S", table, rows, bytes,
        has_ints, extras, compressed names' size]`` and the raw columns that follow it
        (little-endian name ends, CRCs, digests, types, last flags, partition/offsets when
        ``has_ints``, then the compressed names and numbers as kept), read back by
        :meth:`ColumnsBuilder.add_block`."""
        start, stop = self.starts[chunk], self.starts[chunk + 1]
        extras = {
            str(row - start): extra for row, extra in self.extras.items() if start <= row < stop
        }
        parts: list[bytes | bytearray] = [
            _le(self.ends[start:stop]), _le(self.crcs[start:stop]),
            self.digests[start * 32 : stop * 32], self.types[start:stop], self.last[start:stop],
        ]  # fmt: skip
        if self.ints is not None:
            parts.append(_le(self.ints[start * 3 : stop * 3]))
        parts += [self.name_chunks[chunk], self.number_chunks[chunk]]
        raw = b"".join(parts)
        names = len(self.name_chunks[chunk])
        return ["S", self.table, stop - start, len(raw), self.ints is not None, extras, names], raw


class ColumnsBuilder:
    """Accumulates one table's rows, from records or checkpoint blocks, into columns."""

    def __init__(self, table: str) -> None:
        self.table = table
        self._name_chunks: list[bytes] = []
        self._number_chunks: list[bytes] = []
        self._names = bytearray()  # of the chunk being filled
        self._numbers = bytearray()
        self._ends = array("I")
        self._crcs = array("q")
        self._digests = bytearray()
        self._types = bytearray()
        self._last = bytearray()
        self._ints: array[int] | None = None
        self._extras: dict[int, dict[str, Any]] = {}
        self._starts = array("q")
        self.limit = CHUNK
        """Rows at which the chunk being filled is closed (:func:`merge` splits evenly)."""

    def __len__(self) -> int:
        return len(self._crcs)

    @property
    def partial(self) -> int:
        """Rows of the chunk being filled."""
        return len(self._crcs) - (self._starts[-1] if self._names else len(self._crcs))

    def _row_done(self) -> None:
        if self.partial >= self.limit:
            self._flush()

    def _begin_row(self) -> None:
        if not self._names:
            self._starts.append(len(self._crcs))

    def _flush(self) -> None:
        if self._names or self._numbers:
            self._name_chunks.append(zlib.compress(self._names, _LEVEL))
            self._number_chunks.append(zlib.compress(self._numbers, _LEVEL))
            self._names, self._numbers = bytearray(), bytearray()

    def _extend_ints(self, values: array[int] | None, rows: int) -> None:
        """Partition/offsets of ``rows`` rows appended (None: all NONE)."""
        if self._ints is None and values is not None and values.count(NONE) != len(values):
            self._ints = array("q", [NONE]) * (3 * (len(self._crcs) - rows))
        if self._ints is not None:
            self._ints.extend(values if values is not None else array("q", [NONE]) * (3 * rows))

    def add(self, record: SegmentRecord, *, last: bool) -> None:
        """Append one version (a name's versions oldest first, ``last`` on the current one)."""
        row = len(self._crcs)
        extra: dict[str, Any] = {}
        name = record.name.encode()
        if b"\n" in name:  # never in a valid key, and the separator of a chunk's names
            raise ValueError(f"segment name {record.name!r} has a line end")
        self._begin_row()
        self._names += name
        self._ends.append(len(self._names))
        self._names += b"\n"
        crc = _int_of(record.crc)
        if crc is None:
            extra["crc"] = record.crc
        self._crcs.append(NONE if crc is None else crc)
        digest = record.sha256
        if len(digest) == 64 and _HEX.issuperset(digest):
            self._digests += bytes.fromhex(digest)
        else:
            self._digests += bytes(32)
            extra["sha256"] = digest
        self._numbers += record.numbers
        if record.table_type in _TYPES:
            self._types.append(_TYPES.index(record.table_type))
        else:
            self._types.append(_OTHER_TYPE)
            extra["tableType"] = record.table_type
        self._last.append(1 if last else 0)
        start, end = _int_of(record.start_offset), _int_of(record.end_offset)
        if start is None and record.start_offset is not None:
            extra["startOffset"] = record.start_offset
        if end is None and record.end_offset is not None:
            extra["endOffset"] = record.end_offset
        values = (record.partition, start, end)
        if self._ints is None and values != (None, None, None):
            self._ints = array("q", [NONE]) * (3 * row)
        if self._ints is not None:
            self._ints.extend(NONE if v is None else v for v in values)
        if record.key_override is not None:
            extra["key"] = record.key_override
        if extra:
            self._extras[row] = extra
        self._row_done()

    def copy_row(self, columns: SegmentColumns, row: int, *, last: bool) -> None:
        """Append ``columns``' row as it is, without building a record."""
        here = len(self._crcs)
        self._begin_row()
        self._names += columns.name_bytes(row)
        self._ends.append(len(self._names))
        self._names += b"\n"
        self._numbers += columns.number_bytes(row)
        self._crcs.append(columns.crcs[row])
        self._digests += columns.digests[row * 32 : row * 32 + 32]
        self._types.append(columns.types[row])
        self._last.append(1 if last else 0)
        values = (NONE, NONE, NONE) if columns.ints is None else columns.ints[row * 3 : row * 3 + 3]
        if self._ints is None and tuple(values) != (NONE, NONE, NONE):
            self._ints = array("q", [NONE]) * (3 * here)
        if self._ints is not None:
            self._ints.extend(values)
        if (extra := columns.extras.get(row)) is not None:
            self._extras[here] = extra
        self._row_done()

    def copy_chunk(self, columns: SegmentColumns, chunk: int, extras: Iterable[int]) -> None:
        """Append ``columns``' chunk as it is, compressed bytes shared, after the chunk being
        filled (``extras``: the chunk's rows that have extras)."""
        self._flush()
        start, stop = columns.starts[chunk], columns.starts[chunk + 1]
        here = len(self._crcs)
        self._starts.append(here)
        self._name_chunks.append(columns.name_chunks[chunk])
        self._number_chunks.append(columns.number_chunks[chunk])
        self._ends.extend(columns.ends[start:stop])
        self._crcs.extend(columns.crcs[start:stop])
        self._digests += columns.digests[start * 32 : stop * 32]
        self._types += columns.types[start:stop]
        self._last += columns.last[start:stop]
        ints = None if columns.ints is None else columns.ints[start * 3 : stop * 3]
        self._extend_ints(ints, stop - start)
        for row in extras:
            self._extras[here + row - start] = columns.extras[row]

    def add_versions(self, versions: Iterable[SegmentRecord]) -> None:
        """Append one name's versions, oldest first."""
        listed = list(versions)
        for position, record in enumerate(listed):
            self.add(record, last=position == len(listed) - 1)

    def add_block(self, header: list[Any], raw: memoryview) -> None:
        """Append a block written by :meth:`SegmentColumns.block` (ValueError if malformed)."""
        (_, _, count, size, has_ints, extras, names_size) = header
        if not isinstance(count, int) or not 1 <= count <= CHUNK or len(raw) != size:
            raise ValueError(f"a block of {len(raw)} bytes for {count} rows, {size} announced")
        self._flush()
        row = len(self._crcs)
        widths = [4 * count, 8 * count, 32 * count, count, count]
        if has_ints:
            widths.append(24 * count)
        widths.append(names_size)
        offsets = list(itertools.accumulate(widths, initial=0))
        if not isinstance(names_size, int) or names_size < 1 or offsets[-1] >= size:
            raise ValueError(f"a block of {size} bytes cannot hold {count} rows")
        ends = _ints(raw[offsets[0] : offsets[1]], "I")
        if any(b < a for a, b in itertools.pairwise(ends)):
            raise ValueError("segment names out of order")
        self._ends.extend(ends)
        self._crcs.extend(_ints(raw[offsets[1] : offsets[2]]))
        self._digests += raw[offsets[2] : offsets[3]]
        self._types += raw[offsets[3] : offsets[4]]
        self._last += raw[offsets[4] : offsets[5]]
        if has_ints:
            if self._ints is None:
                self._ints = array("q", [NONE]) * (3 * row)
            self._ints.extend(_ints(raw[offsets[5] : offsets[6]]))
        elif self._ints is not None:
            self._ints.extend(array("q", [NONE]) * (3 * count))
        self._starts.append(row)
        self._name_chunks.append(bytes(raw[offsets[-2] : offsets[-1]]))
        self._number_chunks.append(bytes(raw[offsets[-1] :]))
        if not isinstance(extras, dict):
            raise ValueError("bad extras")
        for position, extra in extras.items():
            if not 0 <= int(position) < count or not isinstance(extra, dict):
                raise ValueError(f"bad extras for row {position}")
            self._extras[row + int(position)] = extra

    def build(self) -> SegmentColumns:
        self._flush()
        starts = array("q", self._starts)
        starts.append(len(self._crcs))
        return SegmentColumns(
            self.table, self._name_chunks, self._ends, self._crcs, self._digests,
            self._number_chunks, self._types, self._last, self._ints, self._extras, starts,
        )  # fmt: skip


def merge(
    table: str,
    columns: SegmentColumns | None,
    added: dict[str, list[SegmentRecord]],
    hidden: Collection[str],
) -> SegmentColumns | None:
    """New columns: ``columns`` without the ``hidden`` names, with the ``added`` versions
    (name -> versions newer than the columns', oldest first). None when nothing is left.

    Only the chunks a change falls in are rebuilt row by row; the others are copied whole,
    compressed bytes shared, so a checkpoint costs what changed, not the table's size. A
    rebuilt chunk that overflows is split in even pieces (so the next insertions there do not
    split it again), and one that comes out short is topped up with its untouched neighbour's
    rows when both fit in one chunk.
    """
    if columns is not None and not added and not hidden:
        return columns
    builder = ColumnsBuilder(table)
    if columns is None or not len(columns):
        for name in sorted(added):
            builder.add_versions(added[name])
        return builder.build() if len(builder) else None
    firsts = [_first_name(columns, chunk) for chunk in range(len(columns.name_chunks))]
    placed: dict[int, list[str]] = {}  # chunk -> the added names it gets, sorted
    for name in sorted(added):
        placed.setdefault(max(0, bisect.bisect_right(firsts, name) - 1), []).append(name)
    touched = set(placed)
    for name in hidden:
        chunk = bisect.bisect_right(firsts, name) - 1
        touched.add(max(chunk, 0))
        while chunk > 0 and firsts[chunk] == name:  # its older versions end the chunk before
            chunk -= 1
            touched.add(chunk)
    extras: dict[int, list[int]] = {}
    for row in sorted(columns.extras):
        extras.setdefault(columns.chunk_of(row), []).append(row)
    for chunk in range(len(columns.name_chunks)):
        rows = columns.rows(chunk)
        if chunk in touched:
            names = placed.get(chunk, [])
            rows_out = builder.partial + len(rows) + sum(len(added[name]) for name in names)
            builder.limit = -(-rows_out // -(-rows_out // CHUNK))  # in even pieces
            _rebuild(builder, columns, chunk, names, added, hidden)
            builder.limit = CHUNK
        elif builder.partial and builder.partial + len(rows) <= CHUNK:
            for row in rows:  # a short chunk and this one fit in one
                builder.copy_row(columns, row, last=bool(columns.last[row]))
        else:
            builder.copy_chunk(columns, chunk, extras.get(chunk, ()))
    return builder.build() if len(builder) else None


def _first_name(columns: SegmentColumns, chunk: int) -> str:
    """The first name of ``chunk``, inflating only its start when that holds it."""
    start = zlib.decompressobj().decompress(columns.name_chunks[chunk], 512)
    end = start.find(b"\n")
    return (start[:end] if end != -1 else columns.name_bytes(columns.starts[chunk])).decode()


def _rebuild(
    builder: ColumnsBuilder,
    columns: SegmentColumns,
    chunk: int,
    placed: list[str],
    added: dict[str, list[SegmentRecord]],
    hidden: Collection[str],
) -> None:
    """Copy ``chunk`` row by row: without the ``hidden`` names' rows, with the ``placed``
    names' versions after their current row, or where they sort when the chunk lacks them."""
    position = 0
    for row in columns.rows(chunk):
        name = columns.name(row)
        while position < len(placed) and placed[position] < name:
            builder.add_versions(added[placed[position]])  # a new name
            position += 1
        current = bool(columns.last[row])
        newer = current and position < len(placed) and placed[position] == name
        if name not in hidden:
            builder.copy_row(columns, row, last=current and not newer)
        if newer:
            builder.add_versions(added[name])
            position += 1
    for name in placed[position:]:
        builder.add_versions(added[name])
