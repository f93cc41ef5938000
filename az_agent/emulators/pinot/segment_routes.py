"""Listing, describing, downloading and deleting segments; ideal state and external view (§2, §3).

Registration order matters, as route precedence does in JAX-RS: the literal sub-paths
(``zkmetadata``, ``crc``) are added before ``/segments/{tableName}/{segmentName}``.
"""

from __future__ import annotations

import asyncio
from typing import BinaryIO

from aiohttp import web

from az_agent.drivers.pinot.segments import LLCSegmentName, is_uploaded_realtime_name
from az_agent.emulators.pinot.common import (
    TYPES,
    PinotHttpError,
    existing_tables,
    json_response,
    raw_name,
    table_type_of,
    validate_table_type,
)
from az_agent.emulators.pinot.keys import CLUSTER
from az_agent.emulators.pinot.state import SERVER, TableRecord

_CHUNK = 1 << 20
routes = web.RouteTableDef()


def _timestamp(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise PinotHttpError(
            400,
            "Failed to parse the start/end timestamp. Please make sure they are in "
            "'millisSinceEpoch' format.",
        ) from None


def _in_window(table: TableRecord, segment: str, start: int | None, end: int | None) -> bool:
    zk = table.segments[segment].zk
    if "segment.end.time" not in zk:
        return True  # consuming: no time range yet
    low, high = int(zk.get("segment.start.time", "0")), int(zk["segment.end.time"])
    return (start is None or high >= start) and (end is None or low < end)


@routes.get("/segments/{table}/zkmetadata")
async def zk_metadata(request: web.Request) -> web.Response:
    tables = request.app[CLUSTER].state.tables
    kind = validate_table_type(request.query.get("type"))
    table = tables[existing_tables(tables, request.match_info["table"], kind)[0]]
    return json_response({name: dict(sorted(s.zk.items())) for name, s in table.segments.items()})


@routes.get("/segments/{table}/crc")
async def crc_map(request: web.Request) -> web.Response:
    tables = request.app[CLUSTER].state.tables
    table = tables[existing_tables(tables, request.match_info["table"], "OFFLINE")[0]]
    return json_response(
        {name: s.zk.get("segment.crc", "-1") for name, s in sorted(table.segments.items())}
    )


@routes.get("/segments/{table}/{segment}/metadata")
async def segment_metadata(request: web.Request) -> web.Response:
    tables = request.app[CLUSTER].state.tables
    name, segment = request.match_info["table"], request.match_info["segment"]
    candidates = [name] if table_type_of(name) else [f"{name}_{kind}" for kind in TYPES]
    for candidate in candidates:
        table = tables.get(candidate)
        if table is not None and segment in table.segments:
            return json_response(dict(sorted(table.segments[segment].zk.items())))
    raise PinotHttpError(404, f"Failed to find segment: {segment} in table: {name}")


@routes.get("/segments/{table}/{segment}")
async def download(request: web.Request) -> web.StreamResponse:
    cluster = request.app[CLUSTER]
    table, segment = request.match_info["table"], request.match_info["segment"]
    # Served from <dataDir>/<tableName>/<segment>: only the raw name finds the file.
    path = cluster.store.blob(table, segment)
    try:
        handle: BinaryIO = await asyncio.to_thread(path.open, "rb")
    except (FileNotFoundError, NotADirectoryError):
        raise PinotHttpError(
            404, f"Segment {segment} or table {table} not found in {path.absolute()}"
        ) from None
    try:
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f"attachment; filename={path.name}",
            }
        )
        response.content_length = size
        await response.prepare(request)
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(handle.close)


@routes.delete("/segments/{table}/{segment}")
async def delete_segment(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    name, segment = request.match_info["table"], request.match_info["segment"]
    kind = table_type_of(name)
    if kind is None:
        realtime = LLCSegmentName.parse(segment) or is_uploaded_realtime_name(segment)
        kind = "REALTIME" if realtime else "OFFLINE"
    async with cluster.lock:
        typed = existing_tables(cluster.state.tables, name, kind)[0]
        table = cluster.state.tables[typed]
        if table.segments.pop(segment, None) is not None:
            await asyncio.to_thread(cluster.store.blob(table.raw, segment).unlink, True)
    await cluster.save()
    return json_response({"status": "Segment deleted"})


@routes.get("/segments/{table}")
async def list_segments(request: web.Request) -> web.Response:
    tables = request.app[CLUSTER].state.tables
    kind = validate_table_type(request.query.get("type"))
    start, end = _timestamp(request, "startTimestamp"), _timestamp(request, "endTimestamp")
    if start is not None and end is not None and start >= end:
        raise PinotHttpError(500, f"Invalid time range: [{start}, {end})")
    result = []
    for typed in existing_tables(tables, request.match_info["table"], kind):
        table = tables[typed]
        if start is None and end is None:
            names = list(table.segments)  # 100,000 names: no per-segment look without a window
        else:
            names = [s for s in table.segments if _in_window(table, s, start, end)]
        result.append({table.type: names})
    return json_response(result)


def _view(request: web.Request) -> web.Response:
    tables = request.app[CLUSTER].state.tables
    kind = validate_table_type(request.query.get("tableType"))
    name = request.match_info["table"]
    raw = raw_name(name)
    if not any(f"{raw}_{k}" in tables for k in TYPES):
        raise PinotHttpError(404, "Table not found")
    wanted = set(filter(None, request.query.get("segmentNames", "").split(",")))
    view: dict[str, dict[str, dict[str, str]] | None] = {}
    for candidate in TYPES:
        table = tables.get(f"{raw}_{candidate}")
        if table is None or kind not in (None, candidate):
            view[candidate] = None
            continue
        view[candidate] = {
            segment: {SERVER: record.state}
            for segment, record in table.segments.items()
            if not wanted or segment in wanted
        }
    return json_response(view)


@routes.get("/tables/{table}/idealstate")
async def ideal_state(request: web.Request) -> web.Response:
    return _view(request)


@routes.get("/tables/{table}/externalview")
async def external_view(request: web.Request) -> web.Response:
    # One in-process server finishes every transition at once: the view equals the ideal state.
    return _view(request)
