"""``POST /v2/segments`` and ``POST /segments`` with ``UPLOAD_TYPE=SEGMENT`` (§4).

The one multipart part is streamed to a scratch file while its tar headers are read on the fly
(no whole-file buffering, no untar), then the controller's rules apply in its order: table
config, time interval, new segment or refresh (``allowRefresh``, ``If-Match``, same CRC), and the
file is moved into the deep store.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import aiohttp
from aiohttp import web

from az_agent.drivers.pinot.segments import is_uploaded_realtime_name
from az_agent.drivers.pinot.tarstream import SegmentTarInfo, TarballError, TarballInspector
from az_agent.emulators.pinot.cluster import Cluster
from az_agent.emulators.pinot.common import (
    TYPES,
    PinotHttpError,
    json_response,
    query_flag,
    raw_name,
    table_type_of,
)
from az_agent.emulators.pinot.keys import CLUSTER
from az_agent.emulators.pinot.state import ONLINE, SegmentRecord, TableRecord, now_ms
from az_agent.emulators.pinot.zkmeta import (
    InvalidSegment,
    SegmentFacts,
    same_crc_refresh,
    uploaded_zk,
)

_CHUNK = 1 << 20
_VALID_MIN_MS = 31_536_000_000  # 1971-01-01T00:00:00Z
_VALID_MAX_MS = 3_187_296_000_000  # 2071-01-01T00:00:00Z
_UPLOAD_TYPES = ("SEGMENT", "URI", "METADATA", "JSON")
routes = web.RouteTableDef()


def _upload_type(request: web.Request) -> None:
    value = request.headers.get("UPLOAD_TYPE")
    if value is None or value == "SEGMENT":
        return
    if value not in _UPLOAD_TYPES:
        raise PinotHttpError(
            500,
            "Exception while uploading segment: No enum constant "
            f"org.apache.pinot.common.utils.FileUploadDownloadClient.FileUploadType.{value}",
        )
    # URI and METADATA pushes make the controller fetch from a deep store: not emulated.
    raise PinotHttpError(400, f"Unsupported upload type: {value}")


def _write(handle: BinaryIO, inspector: TarballInspector, chunk: bytes) -> TarballError | None:
    handle.write(chunk)
    try:
        inspector.feed(chunk)
    except TarballError as exc:
        return exc
    return None


async def _receive(request: web.Request, scratch: Path) -> tuple[SegmentTarInfo, int]:
    """Stream the single part to ``scratch``, reading its metadata on the way."""
    invalid = PinotHttpError(400, "Invalid multi-part form for segment metadata")
    reader = await request.multipart()
    part = await reader.next()
    if not isinstance(part, aiohttp.BodyPartReader):
        raise invalid
    inspector = TarballInspector()
    broken: TarballError | None = None
    size = 0
    handle: BinaryIO = await asyncio.to_thread(scratch.open, "wb")
    try:
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if broken is None:  # keep draining the request after a bad tarball
                broken = await asyncio.to_thread(_write, handle, inspector, chunk)
    finally:
        await asyncio.to_thread(handle.close)
    if await reader.next() is not None:
        raise invalid
    try:
        if broken is not None:
            raise broken
        return inspector.finish(), size
    except (TarballError, ValueError) as exc:
        raise PinotHttpError(500, f"Exception while uploading segment: {exc}") from exc


def _check_time(table: TableRecord, facts: SegmentFacts, segment: str) -> None:
    if (table.config.get("ingestionConfig") or {}).get("segmentTimeValueCheck") is False:
        return
    interval = facts.interval_ms()
    if interval is not None:
        start, end = interval
        if start < _VALID_MIN_MS or end > _VALID_MAX_MS:
            shown = "/".join(
                datetime.fromtimestamp(v / 1000, UTC).isoformat(timespec="milliseconds")
                for v in interval
            )
            raise PinotHttpError(
                403,
                f"Invalid segment start/end time: {shown} (in millis: {start}/{end}) for "
                f"segment: {segment} of table: {table.name}, must be between: "
                "1971-01-01T00:00:00.000Z/2071-01-01T00:00:00.000Z",
            )
        return
    column = (table.config.get("segmentsConfig") or {}).get("timeColumnName")
    if column:
        raise PinotHttpError(
            403,
            f"Failed to find time interval in segment: {segment} for table: {table.name} "
            f"with time column: {column}",
        )


def _check_if_match(request: web.Request, segment: str, table: str, existing_crc: int) -> None:
    expected = request.headers.get("If-Match")
    if expected is None:
        return
    try:
        value = int(expected)
    except ValueError:
        raise PinotHttpError(
            412,
            f"Caught exception for segment: {segment} of table: {table} while parsing "
            f'IF-MATCH CRC: "{expected}"',
        ) from None
    if value != existing_crc:
        raise PinotHttpError(
            412,
            f"For segment: {segment} of table: {table}, expected CRC: {value} does not match "
            f"existing CRC: {existing_crc}",
        )


def _segment_identity(info: SegmentTarInfo) -> tuple[str, int]:
    name = info.segment_name
    if not name:
        raise PinotHttpError(500, "Exception while uploading segment: segment.name is missing")
    try:
        docs = int(info.properties["segment.total.docs"])
    except (KeyError, ValueError):
        raise PinotHttpError(
            500, "Exception while uploading segment: segment.total.docs is missing or invalid"
        ) from None
    return name, docs


async def _store(
    cluster: Cluster,
    request: web.Request,
    table: TableRecord,
    facts: SegmentFacts,
    segment: str,
    scratch: Path,
) -> None:
    """The ZK part of the upload (``ZKOperator.completeSegmentOperations``); lock held."""
    existing = table.segments.get(segment)
    realtime = table.type == "REALTIME"
    blob = cluster.store.blob(table.raw, segment)
    if existing is None:
        if request.headers.get("REFRESH_ONLY", "").lower() == "true":
            raise PinotHttpError(
                410, f"Cannot refresh non-existing segment: {segment} for table: {table.name}"
            )
        try:
            zk = uploaded_zk(None, facts, realtime=realtime, segment=segment, now=now_ms())
        except InvalidSegment as exc:
            raise PinotHttpError(
                400,
                f"Got invalid segment metadata when adding segment: {segment} for table: "
                f"{table.name}, reason: {exc}",
            ) from exc
        await asyncio.to_thread(_move, scratch, blob)
        table.segments[segment] = SegmentRecord(zk, ONLINE)
        return
    if not query_flag(request, "allowRefresh", True):
        raise PinotHttpError(
            409, f"Segment: {segment} already exists in table: {table.name}. Refresh not permitted."
        )
    existing_crc = int(existing.zk.get("segment.crc", "-1"))
    _check_if_match(request, segment, table.name, existing_crc)
    new_crc = facts.meta.crc if facts.meta is not None else -(2**63)
    if new_crc == existing_crc:
        existing.zk = same_crc_refresh(existing.zk, facts, now_ms())
        return
    await asyncio.to_thread(_move, scratch, blob)
    existing.zk = uploaded_zk(existing.zk, facts, realtime=realtime, segment=segment, now=now_ms())


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


async def _upload(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    table_param = request.query.get("tableName") or None
    kind = request.query.get("tableType", "OFFLINE").upper()
    if kind not in TYPES:
        raise PinotHttpError(
            500, f"No enum constant org.apache.pinot.spi.config.table.TableType.{kind}"
        )
    if table_param and table_type_of(table_param) not in (None, kind):
        raise PinotHttpError(400, f"Table name: {table_param} does not match table type: {kind}")
    _upload_type(request)
    if not request.content_type.startswith("multipart/"):
        raise PinotHttpError(
            400, "Segment file (as multipart/form-data) is required for SEGMENT upload mode"
        )
    scratch = cluster.store.scratch_file("upload")
    try:
        info, size = await _receive(request, scratch)
        segment, _docs = _segment_identity(info)
        raw = (
            raw_name(table_param) if table_param else info.properties.get("segment.table.name", "")
        )
        typed = f"{raw}_{kind}"
        if is_uploaded_realtime_name(segment) and kind != "REALTIME":
            raise PinotHttpError(
                400,
                f"Cannot upload segment: {segment} to OFFLINE table as this format is reserved "
                "for uploaded real-time segment",
            )
        async with cluster.lock:
            table = cluster.state.tables.get(typed)
            if table is None:
                raise PinotHttpError(400, f"Failed to find table: {typed}")
            facts = SegmentFacts(
                info.properties, info.creation_meta, cluster.download_url(raw, segment), size
            )
            _check_time(table, facts, segment)
            await _store(cluster, request, table, facts, segment, scratch)
        await cluster.save()
    finally:
        await asyncio.to_thread(scratch.unlink, True)
    return json_response({"status": f"Successfully uploaded segment: {segment} of table: {typed}"})


@routes.post("/v2/segments")
async def upload_v2(request: web.Request) -> web.Response:
    return await _upload(request)


@routes.post("/segments")
async def upload_legacy(request: web.Request) -> web.Response:
    return await _upload(request)
