"""Reading a segment tarball's metadata from a stream of chunks, whatever their size."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from az_agent.drivers.errors import CorruptObject
from az_agent.drivers.pinot.segments import CreationMeta
from az_agent.drivers.pinot.tarstream import (
    SegmentTarInfo,
    TarballError,
    TarballInspector,
    verified_segment_stream,
)

META = CreationMeta(3_618_839_852, 1_714_563_000_000, 2_271_830_915)


def _tarball(
    entries: Sequence[tuple[str, bytes | None]],
    *,
    compress: bool = True,
    fmt: int = tarfile.PAX_FORMAT,
) -> bytes:
    """``None`` content makes a directory entry."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if compress else "w", format=fmt) as archive:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _inspect(data: bytes, chunk: int = 1 << 16) -> SegmentTarInfo:
    inspector = TarballInspector()
    for start in range(0, len(data), chunk):
        inspector.feed(data[start : start + chunk])
    return inspector.finish()


def _segment(name: str, bulk: bytes = b"x" * 70_000) -> list[tuple[str, bytes | None]]:
    return [
        (f"{name}/", None),
        (f"{name}/v3/", None),
        (f"{name}/v3/columns.psf", bulk),
        (f"{name}/v3/metadata.properties", f"segment.name = {name}\n".encode()),
        (f"{name}/v3/creation.meta", META.to_bytes()),
        (f"{name}/v3/index_map", b"col.forward_index.size = 1\n"),
    ]


@given(chunk=st.integers(min_value=1, max_value=5000))
@settings(max_examples=25, deadline=None)
def test_any_chunking_gives_the_same_answer(chunk: int) -> None:
    info = _inspect(_tarball(_segment("seg__0__1__20240501T1130Z")), chunk)
    assert info.segment_name == "seg__0__1__20240501T1130Z"
    assert info.index_dir == "seg__0__1__20240501T1130Z"
    assert info.creation_meta == META


def test_v1_layout_uncompressed_and_long_names() -> None:
    long_name = "t" * 120 + "__0__1__20240501T1130Z"
    entries = [
        (f"{long_name}/", None),
        (f"{long_name}/metadata.properties", f"segment.name = {long_name}\n".encode()),
        (f"{long_name}/creation.meta", META.to_bytes()[:16]),
    ]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        for compress in (True, False):
            info = _inspect(_tarball(entries, compress=compress, fmt=fmt), 777)
            assert info.segment_name == long_name
            assert info.creation_meta == CreationMeta(META.crc, META.creation_time_ms)


def test_v3_wins_over_v1_and_other_directories_do_not_count() -> None:
    entries = [
        ("seg/", None),
        ("seg/creation.meta", CreationMeta(1, 2).to_bytes()),
        ("seg/v3/creation.meta", META.to_bytes()),
        ("seg/star_tree/creation.meta", CreationMeta(9, 9).to_bytes()),
        ("seg/v3/metadata.properties", b"segment.name = seg\n"),
    ]
    assert _inspect(_tarball(entries)).creation_meta == META


def test_metadata_push_layout_starts_with_a_file() -> None:
    entries = [
        ("anything/metadata.properties", b"segment.name = pushed\n"),
        ("anything/creation.meta", META.to_bytes()),
    ]
    info = _inspect(_tarball(entries))
    assert info.index_dir is None
    assert info.segment_name == "pushed"
    assert info.creation_meta == META


def test_multi_member_gzip_and_sizes() -> None:
    raw = _tarball(_segment("seg"), compress=False)
    split = len(raw) // 2
    data = gzip.compress(raw[:split]) + gzip.compress(raw[split:])
    info = _inspect(data, 1000)
    assert info.segment_name == "seg"
    assert info.compressed_size == len(data)


def test_refusals() -> None:
    data = _tarball(_segment("seg"))
    with pytest.raises(TarballError, match="truncated"):
        _inspect(data[: len(data) // 2])
    with pytest.raises(TarballError, match="lz4"):
        _inspect(b"\x04\x22\x4d\x18" + b"\0" * 100)
    with pytest.raises(TarballError, match="zstd"):
        _inspect(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    with pytest.raises(TarballError, match="bad gzip data"):
        _inspect(b"\x1f\x8b" + b"\xff" * 100)
    with pytest.raises(TarballError, match="empty tarball"):
        _inspect(b"\0" * 1024)


def test_a_real_file_fed_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "seg.tar.gz"
    path.write_bytes(_tarball(_segment("disk", b"y" * 300_000)))
    inspector = TarballInspector()
    with path.open("rb") as handle:
        while chunk := handle.read(4096):
            inspector.feed(chunk)
    assert inspector.finish().segment_name == "disk"


async def _stream(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_verified_stream_passes_bytes_and_checks_the_crc() -> None:
    data = _tarball(_segment("seg"))
    passed = [c async for c in verified_segment_stream(_stream(data), META.crc, "seg")]
    assert b"".join(passed) == data
    received: list[bytes] = []

    async def consume(expected: int | None, source: bytes) -> None:
        async for chunk in verified_segment_stream(_stream(source), expected, "seg"):
            received.append(chunk)

    with pytest.raises(CorruptObject, match=f"says CRC {META.crc}, the controller 7"):
        await consume(7, data)
    assert b"".join(received) == data  # every byte was handed out before the failure
    with pytest.raises(CorruptObject, match="truncated"):
        await consume(None, data[: len(data) // 2])
    no_meta = _tarball([("seg/", None), ("seg/metadata.properties", b"segment.name = seg\n")])
    with pytest.raises(CorruptObject, match=r"no creation\.meta"):
        await consume(None, no_meta)
