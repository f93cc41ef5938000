"""Listing, describing and downloading segments; the controller's table-name rules on the wire."""

from __future__ import annotations

from pathlib import Path

import pytest

from az_agent.drivers.errors import NotFound
from az_agent.drivers.pinot import HttpPinotController, SegmentStatus, TableRef, TableType
from az_agent.emulators.pinot import PinotEmulator
from tests.integration.pinot.support import RawHttp, untar_and_check

EVENTS = TableRef("events", TableType.REALTIME)
LOGS = TableRef("logs", TableType.OFFLINE)


async def _download(client: HttpPinotController, table: TableRef | str, name: str) -> bytes:
    async with client.download_segment(table, name) as download:
        data = b"".join([chunk async for chunk in download])
        assert download.length == len(data)
        return data


async def test_committed_segment_metadata_and_crc(
    client: HttpPinotController, http: RawHttp, emulator: PinotEmulator, tmp_path: Path
) -> None:
    committed = (await http.admin("POST", "/tables/events/commit?partition=1"))["committed"]
    assert len(committed) == 1
    segments = {s.name: s for s in await client.segments(EVENTS)}
    done = segments[committed[0]]
    assert done.status is SegmentStatus.DONE
    assert done.is_backup_ready
    assert done.llc_name is not None
    assert done.llc_name.partition == 1
    assert (done.start_offset, done.end_offset) == ("0", "1000")
    assert done.total_docs == 1000
    assert done.crc is not None
    assert done.data_crc is not None
    assert done.raw["segment.use.data.crc"] == "true"
    assert done.download_url == f"{emulator.url}/segments/events/{done.name}"
    consuming = [s for s in segments.values() if s.status is SegmentStatus.IN_PROGRESS]
    assert len(consuming) == 2
    assert not any(s.is_backup_ready for s in consuming)
    assert [s.name for s in await client.backup_ready_segments(EVENTS)] == [done.name]

    tarball = await _download(client, EVENTS, done.name)
    assert done.size_bytes == len(tarball)
    crc, created, data_crc, recomputed = untar_and_check(tarball, tmp_path)
    assert crc == recomputed == done.crc
    assert data_crc == done.data_crc
    assert created > 0
    assert await client.segment(EVENTS, done.name) == done


async def test_offline_segment_crc_and_time(
    client: HttpPinotController, http: RawHttp, tmp_path: Path
) -> None:
    [name] = (await http.admin("POST", "/tables/logs/generate"))["segments"]
    [segment] = await client.backup_ready_segments(LOGS)
    assert segment.name == name
    assert segment.status is SegmentStatus.UPLOADED
    assert "segment.realtime.status" not in segment.raw
    assert segment.push_time_ms is not None
    assert segment.refresh_time_ms is None
    assert segment.end_time_ms is not None
    assert segment.start_time_ms is not None
    assert segment.end_time_ms - segment.start_time_ms == 3_600_000
    crc, created, _, recomputed = untar_and_check(
        await _download(client, "logs_OFFLINE", name), tmp_path
    )
    assert crc == recomputed == segment.crc
    assert created == segment.creation_time_ms
    assert (await http.call("GET", "/segments/logs/crc"))[2] == {name: str(segment.crc)}


async def test_zk_metadata_on_the_wire(http: RawHttp) -> None:
    status, content_type, body = await http.call("GET", "/segments/events/zkmetadata?type=realtime")
    assert (status, content_type) == (200, "application/json")
    assert len(body) == 2
    fields = next(iter(body.values()))
    assert list(fields) == sorted(fields)
    assert fields["segment.realtime.status"] == "IN_PROGRESS"
    assert all(isinstance(value, str) for value in fields.values())
    status, _, listing = await http.call("GET", "/segments/events")
    assert status == 200
    assert [list(entry) for entry in listing] == [["REALTIME"]]
    assert sorted(listing[0]["REALTIME"]) == sorted(body)


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/segments/events?type=foo", 400, "Illegal table type 'foo'"),
        ("/segments/events/zkmetadata?type=bar", 400, "Illegal table type 'bar'"),
        (
            "/segments/events_REALTIME?type=OFFLINE",
            403,
            "Table name: events_REALTIME does not match table type: OFFLINE",
        ),
        (
            "/segments/events_REALTIME/zkmetadata?type=offline",
            403,
            "Table name: events_REALTIME does not match table type: OFFLINE",
        ),
        ("/segments/nope", 404, "Table 'nope' not found."),
        ("/segments/events?type=OFFLINE", 404, "Table 'events_OFFLINE' not found."),
        ("/segments/nope_OFFLINE?type=OFFLINE", 404, "Table 'nope_OFFLINE_OFFLINE' not found."),
        ("/segments/events/nope/metadata", 404, "Failed to find segment: nope in table: events"),
        ("/segments/events?startTimestamp=x", 400, None),
        ("/tables/nope/idealstate", 404, "Table not found"),
        ("/tables/events/externalview?tableType=x", 400, "Illegal table type 'x'"),
    ],
)
async def test_error_bodies(http: RawHttp, path: str, status: int, error: str | None) -> None:
    got_status, content_type, body = await http.call("GET", path)
    assert (got_status, content_type) == (status, "application/json")
    assert body["code"] == status
    if error is not None:
        assert body["error"] == error


async def test_client_errors_are_typed(client: HttpPinotController) -> None:
    with pytest.raises(NotFound, match="Table 'nope_OFFLINE' not found"):
        await client.segments(TableRef("nope", TableType.OFFLINE))
    with pytest.raises(NotFound, match="Failed to find segment: gone in table: events_REALTIME"):
        await client.segment(EVENTS, "gone")


async def test_download_needs_the_raw_name(
    client: HttpPinotController, http: RawHttp, emulator: PinotEmulator
) -> None:
    [name] = (await http.admin("POST", "/tables/logs/generate"))["segments"]
    status, _, body = await http.call("GET", f"/segments/logs_OFFLINE/{name}")
    blob = emulator.data_dir / "deepstore" / "logs_OFFLINE" / name
    assert (status, body["error"]) == (
        404,
        f"Segment {name} or table logs_OFFLINE not found in {blob.absolute()}",
    )
    async with http.session.get(f"{http.base}/segments/logs/{name}") as response:
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"] == f"attachment; filename={name}"
        assert (await response.read())[:2] == b"\x1f\x8b"
    # The client drops the suffix itself; a missing segment fails before any byte.
    assert len(await _download(client, LOGS, name)) > 0
    with pytest.raises(NotFound, match="Segment missing or table logs not found"):
        async with client.download_segment(LOGS, "missing"):
            pytest.fail("the context must not be entered")


async def test_literal_routes_win_and_delete(
    client: HttpPinotController, http: RawHttp, emulator: PinotEmulator
) -> None:
    [name] = (await http.admin("POST", "/tables/logs/generate"))["segments"]
    # /segments/{t}/zkmetadata is not the download of a segment called "zkmetadata".
    assert (await http.call("GET", "/segments/logs/zkmetadata"))[1] == "application/json"
    status, _, body = await http.call("DELETE", f"/segments/logs/{name}")
    assert (status, body) == (200, {"status": "Segment deleted"})
    assert await client.segments(LOGS) == []
    assert not (emulator.data_dir / "deepstore" / "logs" / name).exists()
    with pytest.raises(NotFound):
        await client.segment(LOGS, name)


async def test_ideal_state_and_external_view(http: RawHttp) -> None:
    committed = (await http.admin("POST", "/tables/events/commit?partition=0"))["committed"]
    status, _, view = await http.call("GET", "/tables/events/idealstate")
    assert status == 200
    assert view["OFFLINE"] is None
    states = {name: set(replicas.values()) for name, replicas in view["REALTIME"].items()}
    assert states[committed[0]] == {"ONLINE"}
    assert sorted(s for s, v in states.items() if v == {"CONSUMING"}) == sorted(
        set(states) - set(committed)
    )
    assert (await http.call("GET", "/tables/events/externalview"))[2] == view
    only = (await http.call("GET", f"/tables/events/idealstate?segmentNames={committed[0]}"))[2]
    assert list(only["REALTIME"]) == committed
    assert (await http.call("GET", "/tables/logs/idealstate?tableType=OFFLINE"))[2] == {
        "OFFLINE": {},
        "REALTIME": None,
    }


async def test_history_segments_are_metadata_only(
    client: HttpPinotController, http: RawHttp
) -> None:
    """``/_emulator/tables/{t}/history`` (the discovery benchmark's bulk seeding): pushed
    segments listed and described as uploads leave them, with no deep-store file."""
    added = await http.admin("POST", "/tables/events/history?count=6")
    assert added["added"] == 6
    names = await client.segment_names(EVENTS)
    history = sorted(n for n in names if n.startswith("uploaded__events__"))
    assert len(history) == 6
    assert {n.split("__")[2] for n in history} == {"0", "1"}  # spread over the partitions
    ready = {s.name: s for s in await client.backup_ready_segments(EVENTS)}
    assert sorted(ready) == history
    meta = ready[history[0]]
    assert meta.status is SegmentStatus.UPLOADED
    assert meta.crc is not None
    assert meta.end_time_ms is not None
    assert await client.segment(EVENTS, meta.name) == meta
    with pytest.raises(NotFound):
        await _download(client, EVENTS, meta.name)
    offline = await http.admin("POST", "/tables/logs/history?count=2")
    assert offline["segments"] == 2
    assert all(s.status is SegmentStatus.UPLOADED for s in await client.segments(LOGS))
