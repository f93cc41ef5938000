"""Reading a segment tarball's metadata while its bytes stream past, without keeping them.

A segment is streamed from the controller to object storage (and back) chunk by chunk; feeding
the same chunks to :class:`TarballInspector` yields its ``metadata.properties`` and
``creation.meta`` at the end, so the CRC in ``creation.meta`` can be compared with ZooKeeper's
``segment.crc`` with no second read and no temporary file. Only the two small metadata files
and the tar headers are buffered; member data is counted and dropped.

It follows the controller's rules (§4, §7 of the reference): the compression is detected by
magic number (gzip, or an uncompressed tar; lz4 and zstd are refused), the first entry names the
index directory when it is a directory, and the metadata files are looked up in ``<dir>/v3/``
first, then in ``<dir>/``; when the first entry is a file, any entry with the right base name
counts (the layout of a METADATA push). ustar, GNU long names and PAX path records are handled.
:func:`verified_segment_stream` wraps a download so that a wrong CRC fails the copy.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from az_agent.drivers.errors import CorruptObject
from az_agent.drivers.pinot.segments import (
    CREATION_META,
    METADATA_PROPERTIES,
    CreationMeta,
    parse_properties,
)

_BLOCK = 512
_MAX_SMALL_MEMBER = 4 << 20
_MAX_INFLATE = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_REFUSED_MAGIC = {b"\x04\x22\x4d\x18": "lz4", b"\x28\xb5\x2f\xfd": "zstd"}


class TarballError(ValueError):
    """The bytes are not a segment tarball this module can read."""


@dataclass(frozen=True, slots=True)
class SegmentTarInfo:
    """What the metadata files of one segment tarball say."""

    index_dir: str | None
    properties: dict[str, str]
    creation_meta: CreationMeta | None
    compressed_size: int

    @property
    def segment_name(self) -> str | None:
        return self.properties.get("segment.name")


@dataclass
class _Member:
    path: str
    kind: bytes
    remaining: int
    padding: int
    keep: bool
    data: bytearray = field(default_factory=bytearray)


class _Inflater:
    """gzip (possibly several members) or pass-through, with bounded output per step."""

    def __init__(self) -> None:
        self._mode: str | None = None
        self._head = b""
        self._zlib: zlib._Decompress | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._mode is None:
            self._head += chunk
            if len(self._head) < 4:
                return []
            chunk, self._head = self._head, b""
            self._mode = self._detect(chunk)
        if self._mode == "tar":
            return [chunk]
        return self._inflate(chunk)

    @staticmethod
    def _detect(head: bytes) -> str:
        if head.startswith(_GZIP_MAGIC):
            return "gzip"
        for magic, name in _REFUSED_MAGIC.items():
            if head.startswith(magic):
                raise TarballError(f"{name}-compressed segment tarballs are not supported")
        return "tar"

    def _inflate(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        while data:
            if self._zlib is None:
                self._zlib = zlib.decompressobj(wbits=31)
            try:
                out.append(self._zlib.decompress(data, _MAX_INFLATE))
                while self._zlib.unconsumed_tail:
                    out.append(self._zlib.decompress(self._zlib.unconsumed_tail, _MAX_INFLATE))
            except zlib.error as exc:
                raise TarballError(f"bad gzip data: {exc}") from exc
            data = self._zlib.unused_data if self._zlib.eof else b""
            if self._zlib.eof:
                self._zlib = None
        return out

    def finish(self) -> list[bytes]:
        if self._mode is None and self._head:
            self._mode = self._detect(self._head)
            return [self._head] if self._mode == "tar" else self._inflate(self._head)
        if self._zlib is not None and not self._zlib.eof:
            raise TarballError("gzip stream ends early (truncated tarball)")
        return []


def _octal(field_bytes: bytes) -> int:
    if field_bytes[:1] and field_bytes[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field_bytes[1:], "big")
    text = field_bytes.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    path = None
    view = data
    while view:
        length_text, _, _ = view.partition(b" ")
        length = int(length_text)
        record, view = view[:length], view[length:]
        key, _, value = record[len(length_text) + 1 :].rstrip(b"\n").partition(b"=")
        if key == b"path":
            path = value.decode("utf-8")
    return path


class TarballInspector:
    """Feed a segment tarball chunk by chunk, then :meth:`finish` for its metadata."""

    def __init__(self) -> None:
        self._inflater = _Inflater()
        self._buffer = bytearray()
        self._member: _Member | None = None
        self._skip_padding = 0
        self._next_path: str | None = None
        self._first: tuple[str, bool] | None = None
        self._small: dict[str, bytes] = {}
        self._ended = False
        self.compressed_size = 0

    def feed(self, chunk: bytes) -> None:
        """Consume the next bytes of the tarball (blocking CPU work of about 1 ms per MiB)."""
        self.compressed_size += len(chunk)
        for piece in self._inflater.feed(chunk):
            self._consume(piece)

    def _consume(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer and not self._ended:
            if self._member is not None:
                self._member_bytes()
            elif self._skip_padding:
                dropped = min(self._skip_padding, len(self._buffer))
                del self._buffer[:dropped]
                self._skip_padding -= dropped
            elif len(self._buffer) >= _BLOCK:
                header = bytes(self._buffer[:_BLOCK])
                del self._buffer[:_BLOCK]
                self._header(header)
            else:
                return
        if self._ended:
            self._buffer.clear()

    def _member_bytes(self) -> None:
        member = self._member
        assert member is not None
        take = min(member.remaining, len(self._buffer))
        if member.keep:
            member.data += self._buffer[:take]
        del self._buffer[:take]
        member.remaining -= take
        if member.remaining == 0:
            self._member = None
            self._skip_padding = member.padding
            self._member_done(member)

    def _header(self, header: bytes) -> None:
        if header == b"\0" * _BLOCK:
            self._ended = True
            return
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and prefix:
            name = f"{prefix}/{name}"
        if self._next_path is not None:
            name, self._next_path = self._next_path, None
        kind = header[156:157] or b"0"
        size = _octal(header[124:136])
        meta_kind = kind in (b"x", b"g", b"L", b"K")
        path = name.removeprefix("./")
        if not meta_kind and self._first is None:
            self._first = (path.rstrip("/"), kind == b"5" or name.endswith("/"))
        keep = meta_kind or (kind in (b"0", b"\0") and self._wanted(path))
        if keep and size > _MAX_SMALL_MEMBER:
            raise TarballError(f"tar member {path!r} is too large for metadata ({size} bytes)")
        member = _Member(path, kind, size, (-size) % _BLOCK, keep)
        if size == 0:
            self._member_done(member)
        else:
            self._member = member

    @staticmethod
    def _wanted(path: str) -> bool:
        return path.rsplit("/", 1)[-1] in (METADATA_PROPERTIES, CREATION_META)

    def _member_done(self, member: _Member) -> None:
        if member.kind == b"L":
            self._next_path = bytes(member.data).split(b"\0", 1)[0].decode("utf-8")
        elif member.kind == b"x":
            self._next_path = _pax_path(bytes(member.data)) or self._next_path
        elif member.keep and member.kind in (b"0", b"\0"):
            self._small[member.path] = bytes(member.data)

    def finish(self) -> SegmentTarInfo:
        """The metadata found; ``TarballError`` for a truncated or unreadable tarball."""
        for piece in self._inflater.finish():
            self._consume(piece)
        if self._member is not None:
            raise TarballError("tarball ends inside a member (truncated)")
        if self._first is None:
            raise TarballError("empty tarball")
        index_dir, is_dir = self._first
        properties_raw = self._lookup(METADATA_PROPERTIES, index_dir if is_dir else None)
        meta_raw = self._lookup(CREATION_META, index_dir if is_dir else None)
        properties = parse_properties(properties_raw.decode("utf-8")) if properties_raw else {}
        meta = CreationMeta.from_bytes(meta_raw) if meta_raw is not None else None
        return SegmentTarInfo(index_dir if is_dir else None, properties, meta, self.compressed_size)

    def _lookup(self, name: str, index_dir: str | None) -> bytes | None:
        if index_dir is not None:
            for candidate in (f"{index_dir}/v3/{name}", f"{index_dir}/{name}"):
                if candidate in self._small:
                    return self._small[candidate]
            return None
        for path, data in self._small.items():
            if path.rsplit("/", 1)[-1] == name:
                return data
        return None


async def verified_segment_stream(
    chunks: AsyncIterable[bytes], expected_crc: int | None, what: str
) -> AsyncIterator[bytes]:
    """Pass ``chunks`` through, then check the tarball's ``creation.meta`` CRC.

    The check runs after the last chunk is handed out and before the stream ends, so a consumer
    that uploads the chunks somewhere (an object store's streaming ``put``) fails instead of
    completing: ``CorruptObject`` when the CRC differs from ``expected_crc`` (ZK's
    ``segment.crc``) or the bytes are not a readable segment tarball. ``expected_crc=None``
    only checks that the tarball is readable and has a ``creation.meta``.
    """
    inspector = TarballInspector()
    async for chunk in chunks:
        try:
            inspector.feed(chunk)
        except TarballError as exc:
            raise CorruptObject(f"{what}: {exc}") from exc
        yield chunk
    try:
        info = inspector.finish()
    except TarballError as exc:
        raise CorruptObject(f"{what}: {exc}") from exc
    if info.creation_meta is None:
        raise CorruptObject(f"{what}: the tarball has no creation.meta")
    if expected_crc is not None and info.creation_meta.crc != expected_crc:
        found = info.creation_meta.crc
        raise CorruptObject(
            f"{what}: creation.meta says CRC {found}, the controller {expected_crc}"
        )
