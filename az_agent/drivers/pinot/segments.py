"""What a Pinot segment is on disk and in a tarball: names, ``creation.meta``, CRC, properties.

Shared by the controller client (to check what it streams) and the emulator (to write segments
that real tooling would accept). Pure functions and small value types, no I/O of its own except
:func:`segment_crc`, which reads a directory (call it through ``asyncio.to_thread``).

The CRC is Pinot's ``CrcUtils.computeCrc``: one Adler-32 over the bytes of every file below the
index directory, in sorted path order, leaving out ``creation.meta`` and ``*.crc`` files. The
integrity check to trust for a downloaded tarball is the first long of its ``creation.meta``
against ZooKeeper's ``segment.crc`` (see :mod:`az_agent.drivers.pinot.tarstream`).
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

CREATION_META = "creation.meta"
METADATA_PROPERTIES = "metadata.properties"
_READ_SIZE = 1 << 16
_LLC_TIME_FORMAT = "%Y%m%dT%H%MZ"


@dataclass(frozen=True, slots=True)
class LLCSegmentName:
    """``{table}__{partition}__{sequence}__{yyyyMMdd'T'HHmm'Z'}`` (exactly three ``__``)."""

    table: str
    partition: int
    sequence: int
    created: str

    @classmethod
    def parse(cls, name: str) -> LLCSegmentName | None:
        """The parts of an LLC name, or ``None`` for any other form (offline, uploaded-realtime)."""
        parts = name.split("__")
        if len(parts) != 4:
            return None
        table, partition, sequence, created = parts
        if not (partition.isdigit() and sequence.isdigit()) or not table:
            return None
        return cls(table, int(partition), int(sequence), created)

    @classmethod
    def build(cls, table: str, partition: int, sequence: int, at_ms: int) -> LLCSegmentName:
        created = datetime.fromtimestamp(at_ms / 1000, UTC).strftime(_LLC_TIME_FORMAT)
        return cls(table, partition, sequence, created)

    def next(self, at_ms: int) -> LLCSegmentName:
        """The name of the consuming segment that follows this one on commit."""
        return LLCSegmentName.build(self.table, self.partition, self.sequence + 1, at_ms)

    def __str__(self) -> str:
        return f"{self.table}__{self.partition}__{self.sequence}__{self.created}"


def is_uploaded_realtime_name(name: str) -> bool:
    """``{prefix}__{table}__{partition}__{time}__{suffix}``: reserved for REALTIME uploads."""
    parts = name.split("__")
    return len(parts) == 5 and parts[2].isdigit() and all(parts)


@dataclass(frozen=True, slots=True)
class CreationMeta:
    """The 16- or 24-byte big-endian ``creation.meta``: crc, creation time, optional data CRC."""

    crc: int
    creation_time_ms: int
    data_crc: int | None = None

    @classmethod
    def from_bytes(cls, raw: bytes) -> CreationMeta:
        if len(raw) < 16:
            raise ValueError(f"creation.meta has {len(raw)} bytes, expected 16 or 24")
        crc, created = struct.unpack(">qq", raw[:16])
        data_crc = struct.unpack(">q", raw[16:24])[0] if len(raw) >= 24 else None
        return cls(crc, created, data_crc)

    def to_bytes(self) -> bytes:
        raw = struct.pack(">qq", self.crc, self.creation_time_ms)
        if self.data_crc is not None and self.data_crc >= 0:
            raw += struct.pack(">q", self.data_crc)
        return raw


def _java_path_order(relative: str) -> bytes:
    # Java compares paths by UTF-16 code unit; big-endian UTF-16 bytes sort the same way.
    return relative.encode("utf-16-be", "surrogatepass")


def crc_files(index_dir: str | os.PathLike[str], *, data_only: bool = False) -> list[Path]:
    """The files ``CrcUtils`` feeds to Adler-32, in its order (``data_only``: the data CRC set)."""
    root = Path(index_dir)
    selected: list[tuple[bytes, Path]] = []
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            if name == CREATION_META or name.endswith(".crc"):
                continue
            if data_only and not name.endswith((".fwd", ".dict")):
                continue
            path = Path(dirpath, name)
            relative = path.relative_to(root).as_posix()
            selected.append((_java_path_order(relative), path))
    selected.sort(key=lambda item: item[0])
    return [path for _key, path in selected]


def adler32_files(paths: Iterable[Path]) -> int:
    """One Adler-32, starting at 1, over the concatenated bytes of ``paths``."""
    crc = 1
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(_READ_SIZE):
                crc = zlib.adler32(chunk, crc)
    return crc


def segment_crc(index_dir: str | os.PathLike[str], *, data_only: bool = False) -> int:
    """Pinot's segment CRC of an untarred index directory (blocking: use a thread)."""
    return adler32_files(crc_files(index_dir, data_only=data_only))


def find_format_file(index_dir: Path, name: str) -> Path | None:
    """``SegmentDirectoryPaths.findFormatFile``: ``<dir>/v3/<name>``, else ``<dir>/<name>``."""
    for candidate in (index_dir / "v3" / name, index_dir / name):
        if candidate.is_file():
            return candidate
    return None


# --- Java properties (the subset Pinot writes with commons-configuration) -----------------------

_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_BLANKS = " \t\f"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
"""What Java's ``Properties`` counts as white space (not Unicode's wider set)."""


def _unescape(text: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            nxt = text[index + 1]
            if nxt == "u" and index + 6 <= len(text):
                out.append(chr(int(text[index + 2 : index + 6], 16)))
                index += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def _logical_lines(text: str) -> Iterable[str]:
    pending: str | None = None
    for raw in _LINE_BREAK.split(text):
        line = raw.lstrip(_BLANKS)
        if pending is None and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending = (pending or "") + line[:-1]
            continue
        yield (pending or "") + line
        pending = None
    if pending is not None:
        yield pending


def _split_key(line: str) -> tuple[str, str]:
    """Java's rule: the key ends at the first unescaped ``=``, ``:`` or blank."""
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\":
            index += 2
            continue
        if char in "=:" or char in _BLANKS:
            break
        index += 1
    rest = line[index:].lstrip(_BLANKS)
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(_BLANKS)
    return line[:index], rest


def parse_properties(text: str) -> dict[str, str]:
    """Parse a ``.properties`` file (``key = value``, ``key: value``, escapes, continuations)."""
    result: dict[str, str] = {}
    for line in _logical_lines(text):
        key, value = _split_key(line)
        result[_unescape(key)] = _unescape(value)
    return result


def _escape(text: str, *, key: bool) -> str:
    out = text.replace("\\", "\\\\")
    for char, letter in (("\n", "n"), ("\r", "r"), ("\t", "t"), ("\f", "f")):
        out = out.replace(char, "\\" + letter)
    if key:
        for char in "=: #!":
            out = out.replace(char, "\\" + char)
    elif out.startswith(" "):
        out = "\\" + out
    return out


def format_properties(values: Mapping[str, str]) -> str:
    """``key = value`` lines, in the given order, as commons-configuration writes them."""
    return "".join(f"{_escape(k, key=True)} = {_escape(v, key=False)}\n" for k, v in values.items())
