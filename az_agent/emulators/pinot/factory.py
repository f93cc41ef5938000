"""Fabricated segments that look real to every tool that reads them.

A generated tarball has Pinot's v3 layout (``<seg>/v3/columns.psf``, ``index_map``,
``metadata.properties``, ``creation.meta``), a ``metadata.properties`` the controller's upload
path accepts, and a ``creation.meta`` whose CRC is the true Pinot CRC of the other files
(Adler-32 over them in sorted path order, §12). The bulk is ``columns.psf``, filled with
pseudo-random bytes drawn from a seed and the segment name, so the same seed and name give the
same bytes. The tarball is written as a stream (no index directory on disk, no whole file in
memory), gzip at level 0 by default: real gzip, but cheap to produce at hundreds of MB/s.
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from az_agent.drivers.pinot.segments import CreationMeta, format_properties

_OVERHEAD = 8 * 512 + 2048
"""Tar headers, the small files and the end-of-archive blocks, roughly."""
_COPY_BUFFER = 1 << 20
CREATOR_VERSION = "az-agent-pinot-emulator"


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """Everything that decides a generated segment's bytes."""

    name: str
    raw_table: str
    size_bytes: int
    seed: int
    creation_time_ms: int
    start_time_ms: int
    end_time_ms: int
    total_docs: int
    time_column: str | None = "ts"
    start_offset: str | None = None
    end_offset: str | None = None
    gzip_level: int = 0


@dataclass(frozen=True, slots=True)
class BuiltSegment:
    crc: int
    data_crc: int
    creation_time_ms: int
    size_bytes: int


class _RandomColumns(io.RawIOBase):
    """``columns.psf``: seeded pseudo-random bytes, checksummed as they are read."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self._rng = rng
        self._remaining = size
        self.adler = 1

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        count = self._remaining if size < 0 else min(size, self._remaining)
        data = self._rng.randbytes(count)
        self._remaining -= count
        self.adler = zlib.adler32(data, self.adler)
        return data


def metadata_properties(plan: SegmentPlan) -> dict[str, str]:
    """The keys the controller reads (§7), plus the time column's own metadata."""
    props = {
        "segment.name": plan.name,
        "segment.table.name": plan.raw_table,
        "segment.dimension.column.names": "",
        "segment.metric.column.names": "",
        "segment.total.docs": str(plan.total_docs),
        "segment.index.version": "v3",
        "creator.version": CREATOR_VERSION,
    }
    if plan.time_column:
        column = plan.time_column
        props |= {
            "segment.time.column.name": column,
            "segment.datetime.column.names": "",
            "segment.start.time": str(plan.start_time_ms),
            "segment.end.time": str(plan.end_time_ms),
            "segment.time.unit": "MILLISECONDS",
            f"column.{column}.columnType": "DATE_TIME",
            f"column.{column}.dataType": "LONG",
            f"column.{column}.cardinality": str(plan.total_docs),
            f"column.{column}.totalDocs": str(plan.total_docs),
            f"column.{column}.minValue": str(plan.start_time_ms),
            f"column.{column}.maxValue": str(plan.end_time_ms),
            f"column.{column}.hasDictionary": "false",
            f"column.{column}.isSorted": "true",
        }
    if plan.start_offset is not None and plan.end_offset is not None:
        props["segment.realtime.startOffset"] = plan.start_offset
        props["segment.realtime.endOffset"] = plan.end_offset
    return props


def _info(path: str, mtime: int, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.mtime = mtime
    info.size = size
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info


def build_segment(plan: SegmentPlan, dest: Path) -> BuiltSegment:
    """Write the tarball of ``plan`` to ``dest`` (blocking: run it in a thread)."""
    rng = random.Random(f"{plan.seed}/{plan.raw_table}/{plan.name}")
    payload = max(0, plan.size_bytes - _OVERHEAD)
    columns = _RandomColumns(rng, payload)
    index_map = (
        f"{plan.time_column or 'col'}.forward_index.startOffset = 0\n"
        f"{plan.time_column or 'col'}.forward_index.size = {payload}\n"
    ).encode()
    properties = format_properties(metadata_properties(plan)).encode()
    mtime = plan.creation_time_ms // 1000  # integral: no PAX header per entry
    root = plan.name
    # No file name and a zero mtime in the gzip header, as Java writes it: same plan, same bytes.
    with (
        dest.open("wb") as raw,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=plan.gzip_level, mtime=0
        ) as compressed,
        tarfile.TarFile(
            fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_COPY_BUFFER
        ) as archive,
    ):
        archive.addfile(_info(f"{root}/", mtime, directory=True))
        archive.addfile(_info(f"{root}/v3/", mtime, directory=True))
        # Sorted path order is columns.psf < index_map < metadata.properties: the CRC can be
        # accumulated while the files are written, the way CrcUtils reads them.
        archive.addfile(_info(f"{root}/v3/columns.psf", mtime, payload), columns)
        crc = columns.adler
        for name, data in (("index_map", index_map), ("metadata.properties", properties)):
            archive.addfile(_info(f"{root}/v3/{name}", mtime, len(data)), io.BytesIO(data))
            crc = zlib.adler32(data, crc)
        meta = CreationMeta(crc, plan.creation_time_ms, columns.adler).to_bytes()
        archive.addfile(_info(f"{root}/v3/creation.meta", mtime, len(meta)), io.BytesIO(meta))
    return BuiltSegment(crc, columns.adler, plan.creation_time_ms, dest.stat().st_size)
