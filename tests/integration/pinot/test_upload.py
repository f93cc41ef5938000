"""``POST /v2/segments``: new segments, refreshes, same-CRC pushes and every refusal."""

from __future__ import annotations

import io
import struct
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from az_agent.drivers.errors import (
    CorruptObject,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from az_agent.drivers.pinot import (
    Conflict,
    HttpPinotController,
    RequestRejected,
    SegmentStatus,
    TableRef,
    TableType,
)
from tests.integration.pinot.support import RawHttp, reference_crc

LOGS = TableRef("logs", TableType.OFFLINE)
EVENTS = TableRef("events", TableType.REALTIME)
DAY = 86_400_000
T0 = 1_714_521_600_000  # 2024-05-01


def make_tarball(
    directory: Path, name: str, payload: bytes = b"rows", extra: dict[str, str] | None = None
) -> tuple[bytes, int]:
    """A v3 segment tarball with a true CRC in ``creation.meta``; its bytes and CRC."""
    props = {
        "segment.name": name,
        "segment.table.name": "logs",
        "segment.total.docs": "10",
        "segment.start.time": str(T0),
        "segment.end.time": str(T0 + DAY - 1000),
        "segment.time.unit": "MILLISECONDS",
        "segment.index.version": "v3",
    } | (extra or {})
    props = {k: v for k, v in props.items() if v != ""}
    index = directory / name
    (index / "v3").mkdir(parents=True)
    (index / "v3" / "columns.psf").write_bytes(payload)
    (index / "v3" / "metadata.properties").write_text(
        "".join(f"{k} = {v}\n" for k, v in props.items())
    )
    crc = reference_crc(index)
    (index / "v3" / "creation.meta").write_bytes(struct.pack(">qq", crc, T0 + DAY))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        archive.add(index, arcname=name)
    return out.getvalue(), crc


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _download(client: HttpPinotController, table: TableRef, name: str) -> bytes:
    async with client.download_segment(table, name) as download:
        return b"".join([chunk async for chunk in download])


async def test_new_then_same_crc_then_refresh(client: HttpPinotController, tmp_path: Path) -> None:
    name = "logs_1714521600000_1714607999000_0"
    first, crc = make_tarball(tmp_path / "a", name)
    result = await client.upload_segment(LOGS, _chunks(first), segment_name=name)
    assert result.segment == name
    assert result.message == f"Successfully uploaded segment: {name} of table: logs_OFFLINE"
    new = await client.segment(LOGS, name)
    assert new.crc == crc
    assert new.status is SegmentStatus.UPLOADED
    assert new.is_backup_ready
    assert (new.start_time_ms, new.end_time_ms) == (T0, T0 + DAY - 1000)
    assert new.creation_time_ms == T0 + DAY
    assert new.size_bytes == len(first)
    assert new.push_time_ms is not None
    assert new.refresh_time_ms is None
    assert await _download(client, LOGS, name) == first

    # Same CRC (the tarball is rebuilt, so its bytes differ): metadata-only refresh.
    again, same_crc = make_tarball(tmp_path / "b", name)
    assert same_crc == crc
    await client.upload_segment(LOGS, again, segment_name=name)
    same = await client.segment(LOGS, name)
    assert same.crc == crc
    assert same.push_time_ms == new.push_time_ms
    assert same.refresh_time_ms is not None
    assert await _download(client, LOGS, name) == first

    changed, new_crc = make_tarball(tmp_path / "c", name, payload=b"other rows")
    assert new_crc != crc
    with pytest.raises(
        PreconditionFailed, match=f"expected CRC: 1 does not match existing CRC: {crc}"
    ):
        await client.upload_segment(LOGS, changed, segment_name=name, if_match_crc=1)
    await client.upload_segment(LOGS, changed, segment_name=name, if_match_crc=crc)
    refreshed = await client.segment(LOGS, name)
    assert refreshed.crc == new_crc
    assert refreshed.push_time_ms == new.push_time_ms
    assert await _download(client, LOGS, name) == changed
    with pytest.raises(Conflict, match=f"Segment: {name} already exists in table: logs_OFFLINE"):
        await client.upload_segment(LOGS, changed, segment_name=name, allow_refresh=False)


async def test_realtime_uploads(client: HttpPinotController, tmp_path: Path) -> None:
    llc = "events__0__7__20240501T1130Z"
    bare, _ = make_tarball(tmp_path / "a", llc, extra={"segment.table.name": "events"})
    with pytest.raises(RequestRejected, match="must have start/end offset"):
        await client.upload_segment(EVENTS, bare, segment_name=llc)
    with_offsets, crc = make_tarball(
        tmp_path / "b",
        llc,
        extra={"segment.realtime.startOffset": "700", "segment.realtime.endOffset": "800"},
    )
    await client.upload_segment(EVENTS, with_offsets, segment_name=llc)
    restored = await client.segment(EVENTS, llc)
    assert restored.status is SegmentStatus.UPLOADED
    assert restored.crc == crc
    assert (restored.start_offset, restored.end_offset) == ("700", "800")
    uploaded_name = "uploaded__events__0__20240501T1130Z__a1b2"
    other, _ = make_tarball(tmp_path / "c", uploaded_name)
    with pytest.raises(RequestRejected, match="reserved for uploaded real-time segment"):
        await client.upload_segment(LOGS, other, segment_name=uploaded_name)
    await client.upload_segment(EVENTS, other, segment_name=uploaded_name)


async def test_refusals(client: HttpPinotController, tmp_path: Path) -> None:
    good, _ = make_tarball(tmp_path / "a", "s1")
    with pytest.raises(RequestRejected, match="Failed to find table: nope_OFFLINE"):
        await client.upload_segment(TableRef("nope", TableType.OFFLINE), good, segment_name="s1")
    ancient, _ = make_tarball(tmp_path / "b", "s2", extra={"segment.start.time": "0"})
    with pytest.raises(PermissionDenied, match="Invalid segment start/end time"):
        await client.upload_segment(LOGS, ancient, segment_name="s2")
    timeless, _ = make_tarball(tmp_path / "c", "s3", extra={"segment.time.unit": ""})
    with pytest.raises(PermissionDenied, match="Failed to find time interval in segment: s3"):
        await client.upload_segment(LOGS, timeless, segment_name="s3")
    with pytest.raises(Unavailable, match="HTTP 500: Exception while uploading segment"):
        await client.upload_segment(LOGS, b"not a tarball at all", segment_name="junk")
    assert await client.segments(LOGS) == []


async def _post(http: RawHttp, query: str, parts: list[bytes], **headers: str) -> tuple[int, str]:
    form = aiohttp.FormData()
    for index, part in enumerate(parts):
        form.add_field(f"f{index}", part, filename=f"f{index}")
    status, _, body = await http.call("POST", f"/v2/segments?{query}", data=form, headers=headers)
    return status, body["error"]


async def test_wire_refusals(http: RawHttp, tmp_path: Path) -> None:
    good, _ = make_tarball(tmp_path / "a", "s1")
    assert await _post(http, "tableName=logs", [good, good]) == (
        400,
        "Invalid multi-part form for segment metadata",
    )
    assert await _post(http, "tableName=logs&tableType=foo", [good]) == (
        500,
        "No enum constant org.apache.pinot.spi.config.table.TableType.FOO",
    )
    assert await _post(http, "tableName=logs_REALTIME", [good]) == (
        400,
        "Table name: logs_REALTIME does not match table type: OFFLINE",
    )
    assert await _post(http, "tableName=logs", [good], UPLOAD_TYPE="JSON") == (
        400,
        "Unsupported upload type: JSON",
    )
    status, error = await _post(http, "tableName=logs", [good], UPLOAD_TYPE="FOO")
    assert status == 500
    assert error.endswith("FileUploadType.FOO")
    assert await _post(http, "tableName=logs", [good], REFRESH_ONLY="true") == (
        410,
        "Cannot refresh non-existing segment: s1 for table: logs_OFFLINE",
    )
    status, _, body = await http.call("POST", "/v2/segments?tableName=logs", json={})
    assert (status, body["error"]) == (
        400,
        "Segment file (as multipart/form-data) is required for SEGMENT upload mode",
    )
    # The legacy path and a table name taken from the segment's own metadata.
    form = aiohttp.FormData()
    form.add_field("s1", good, filename="s1")
    status, _, body = await http.call("POST", "/segments", data=form)
    assert (status, body) == (
        200,
        {"status": "Successfully uploaded segment: s1 of table: logs_OFFLINE"},
    )


async def test_a_failing_source_is_reported_as_itself(
    client: HttpPinotController, tmp_path: Path
) -> None:
    good, _ = make_tarball(tmp_path / "a", "s1", payload=b"p" * 300_000)

    async def breaks_halfway() -> AsyncIterator[bytes]:
        yield good[: len(good) // 2]
        raise CorruptObject("the bucket copy is corrupt")

    with pytest.raises(CorruptObject, match="the bucket copy is corrupt"):
        await client.upload_segment(LOGS, breaks_halfway(), segment_name="s1")
    assert await client.segments(LOGS) == []
    await client.upload_segment(LOGS, _chunks(good), segment_name="s1")  # the client still works
    assert [s.name for s in await client.segments(LOGS)] == ["s1"]


async def test_a_download_left_half_read_does_not_poison_the_next(
    client: HttpPinotController, tmp_path: Path
) -> None:
    good, _ = make_tarball(tmp_path / "a", "s1", payload=bytes(range(256)) * 20_000)
    await client.upload_segment(LOGS, good, segment_name="s1")
    async with client.download_segment(LOGS, "s1") as download:
        async for _ in download:
            break
    assert await _download(client, LOGS, "s1") == good
