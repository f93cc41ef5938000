"""The Pinot controller over its REST API (aiohttp), as described in ``pinot-controller-api.md``.

Segment bytes are streamed both ways: downloads hand out the response body chunk by chunk,
uploads send a multipart body built from an async stream of unknown length (chunked transfer
encoding), so neither direction holds a segment in memory. Every vendor exception is turned
into our error types by :mod:`az_agent.drivers.pinot.errors`.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import payload as aiohttp_payload
from yarl import URL

from az_agent.drivers.errors import DriverError, Misconfigured, NotFound, Unavailable
from az_agent.drivers.pinot.auth import PinotCredentials
from az_agent.drivers.pinot.base import (
    ConsumeFrom,
    PinotController,
    SegmentDownload,
    SizedStream,
    UploadBody,
    crcs_of,
)
from az_agent.drivers.pinot.config import PinotSettings
from az_agent.drivers.pinot.errors import (
    controller_message,
    error_for_status,
    translate_transport_errors,
)
from az_agent.drivers.pinot.models import (
    ClusterInstances,
    ConsumingSegmentsInfo,
    IngestionStatus,
    JsonObject,
    PauseStatus,
    SegmentMetadata,
    TableRef,
    TableType,
    UploadResult,
    Watermark,
    raw_table_name,
    zk_crc,
)

DEFAULT_CHUNK_SIZE = 1 << 20
_UPLOAD_ANSWER_FACTOR = 10
_METADATA_CONCURRENCY = 8
_UPLOADED = re.compile(r"Successfully uploaded segment: (.+) of table: ")


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in parts)


class _Source:
    """The upload body, remembering an error of its own so that it is not reported as a
    connection failure (aiohttp wraps whatever the body raises)."""

    def __init__(self, body: UploadBody) -> None:
        self._body = body
        self.error: Exception | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert not isinstance(self._body, bytes | bytearray | memoryview)
        try:
            async for chunk in self._body:
                yield chunk
        except Exception as exc:
            self.error = exc
            raise


class _HttpSegmentDownload(SegmentDownload):
    def __init__(
        self, response: aiohttp.ClientResponse, table: TableRef | str, segment: str, chunk: int
    ) -> None:
        self._response = response
        self._chunk = chunk
        self.table = table
        self.segment = segment
        self.length = response.content_length
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        what = f"GET segment {self.segment}"
        with translate_transport_errors(what):
            async for chunk in self._response.content.iter_chunked(self._chunk):
                received += len(chunk)
                yield chunk
        if self.length is not None and received != self.length:
            raise Unavailable(f"{what}: got {received} of {self.length} bytes")
        self.finished = True


class HttpPinotController(PinotController):
    """A :class:`PinotController` talking HTTP(S) to one controller (or its load balancer)."""

    def __init__(
        self,
        base_url: str,
        *,
        credentials: PinotCredentials | None = None,
        tls_verify: bool = True,
        ca_file: str = "",
        timeout_seconds: float = 30.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._authorization = credentials.authorization() if credentials else None
        self._tls_verify = tls_verify
        self._ca_file = ca_file
        self._chunk = chunk_size
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_seconds, sock_read=timeout_seconds
        )
        self._upload_timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=timeout_seconds,
            sock_read=timeout_seconds * _UPLOAD_ANSWER_FACTOR,
        )
        self._session_obj: aiohttp.ClientSession | None = None
        self._session_lock = asyncio.Lock()
        self._bulk_zk_metadata = True

    @classmethod
    def from_settings(
        cls, settings: PinotSettings, credentials: PinotCredentials | None = None
    ) -> HttpPinotController:
        return cls(
            settings.controller_url,
            credentials=credentials,
            tls_verify=settings.tls_verify,
            ca_file=settings.ca_file,
            timeout_seconds=settings.timeout_seconds,
        )

    # --- plumbing -------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self._tls_verify:
            return False
        return ssl.create_default_context(cafile=self._ca_file or None)

    async def _session(self) -> aiohttp.ClientSession:
        async with self._session_lock:
            if self._session_obj is None:
                try:
                    context = await asyncio.to_thread(self._ssl)
                except (OSError, ssl.SSLError) as exc:
                    raise error_for_ca(self._ca_file, exc) from exc
                headers = {"Authorization": self._authorization} if self._authorization else {}
                self._session_obj = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=context), headers=headers
                )
            return self._session_obj

    def _url(self, path: str) -> URL:
        return URL(self._base + path, encoded=True)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> Any:
        """One JSON request; the decoded body, or the typed error for a non-2xx answer."""
        what = f"{method} {path}"
        session = await self._session()
        with translate_transport_errors(what):
            async with session.request(
                method, self._url(path), params=params, json=json_body, timeout=self._timeout
            ) as response:
                body = await response.read()
        if response.status >= 300:
            raise error_for_status(response.status, what, controller_message(body))
        if response.content_type != "application/json":
            return body.decode("utf-8", "replace")
        try:
            return json.loads(body) if body else None
        except ValueError as exc:
            raise Unavailable(f"{what}: unreadable JSON answer: {exc}") from exc

    async def close(self) -> None:
        if self._session_obj is not None:
            await self._session_obj.close()
            self._session_obj = None

    # --- health and tables -----------------------------------------------------------------

    async def health(self) -> None:
        await self._call("GET", "/health")

    async def instances(self) -> ClusterInstances:
        registered, live = await asyncio.gather(
            self._call("GET", "/instances"), self._call("GET", "/liveinstances")
        )
        return ClusterInstances(tuple(_names(registered)), frozenset(_names(live)))

    async def ingestion_status(self, table: TableRef) -> IngestionStatus:
        params = {"type": table.type.value.lower()}
        body = await self._call("GET", _path("tables", table.raw, "status"), params=params)
        return IngestionStatus.from_json(body)

    async def list_tables(self, table_type: TableType | None = None) -> list[TableRef]:
        types = [table_type] if table_type else list(TableType)
        tables: list[TableRef] = []
        for kind in types:
            body = await self._call("GET", "/tables", params={"type": kind.value.lower()})
            tables += [TableRef.parse(name, kind) for name in body.get("tables", [])]
        return sorted(tables)

    async def table_configs(
        self, table: str, table_type: TableType | None = None
    ) -> dict[TableType, JsonObject]:
        params = {"type": table_type.value} if table_type else None
        body = await self._call("GET", _path("tables", table), params=params)
        return {TableType(kind): config for kind, config in body.items() if config is not None}

    async def table_schema(self, table: str) -> JsonObject:
        result: JsonObject = await self._call("GET", _path("tables", table, "schema"))
        return result

    async def schema(self, name: str) -> JsonObject:
        result: JsonObject = await self._call("GET", _path("schemas", name))
        return result

    async def create_schema(
        self, schema: JsonObject, *, override: bool = True, force: bool = False
    ) -> None:
        params = {"override": str(override).lower(), "force": str(force).lower()}
        await self._call("POST", "/schemas", params=params, json_body=schema)

    async def create_table(self, config: JsonObject) -> TableRef:
        await self._call("POST", "/tables", json_body=config)
        return TableRef.parse(str(config["tableName"]), TableType(str(config["tableType"]).upper()))

    # --- segments ---------------------------------------------------------------------------

    async def segments(self, table: TableRef) -> list[SegmentMetadata]:
        body = await self._bulk_zk_metadata_of(table)
        if body is not None:
            return [SegmentMetadata.from_zk(table, n, f) for n, f in body.items()]
        return await self._segments_one_by_one(table, await self._names_without_bulk(table))

    async def segment_crcs(self, table: TableRef) -> dict[str, str]:
        """From the same answer as :meth:`segments`, without building every segment's metadata
        (a twentieth of the CPU: a warm standby asks for every table at each step)."""
        body = await self._bulk_zk_metadata_of(table)
        if body is None:
            found = await self._segments_one_by_one(table, await self._names_without_bulk(table))
            return crcs_of(found)
        crcs = ((name, zk_crc(fields)) for name, fields in body.items())
        return {name: str(crc) for name, crc in crcs if crc is not None}

    async def _bulk_zk_metadata_of(self, table: TableRef) -> dict[str, Any] | None:
        """Every segment's ZK metadata in one request (``/zkmetadata``, Pinot >= 1.0); None
        when the controller has no such route or the table is missing (the list tells which)."""
        if not self._bulk_zk_metadata:
            return None
        path = _path("segments", table.raw, "zkmetadata")
        try:
            body: dict[str, Any] = await self._call("GET", path, params={"type": table.type.value})
        except NotFound:
            return None
        return body

    async def _names_without_bulk(self, table: TableRef) -> list[str]:
        names = await self.segment_names(table)  # NotFound here: the table is missing
        self._bulk_zk_metadata = False
        return names

    async def segment_names(self, table: TableRef) -> list[str]:
        body = await self._call(
            "GET", _path("segments", table.raw), params={"type": table.type.value}
        )
        names: list[str] = []
        for entry in body:
            names.extend(entry.get(table.type.value, ()))
        return names

    async def _segments_one_by_one(
        self, table: TableRef, names: list[str]
    ) -> list[SegmentMetadata]:
        limit = asyncio.Semaphore(_METADATA_CONCURRENCY)
        found: list[SegmentMetadata] = []

        async def fetch(name: str) -> None:
            async with limit:
                try:
                    found.append(await self.segment(table, name))
                except NotFound:
                    return  # deleted since it was listed

        async with asyncio.TaskGroup() as group:
            for name in names:
                group.create_task(fetch(name))
        return found

    async def segment(self, table: TableRef, segment: str) -> SegmentMetadata:
        body = await self._call("GET", _path("segments", table.name_with_type, segment, "metadata"))
        return SegmentMetadata.from_zk(table, segment, body)

    async def delete_segment(self, table: TableRef, segment: str) -> None:
        await self._call("DELETE", _path("segments", table.name_with_type, segment))

    def download_segment(
        self, table: TableRef | str, segment: str
    ) -> AbstractAsyncContextManager[SegmentDownload]:
        return self._download(table, segment)

    @asynccontextmanager
    async def _download(
        self, table: TableRef | str, segment: str
    ) -> AsyncIterator[SegmentDownload]:
        raw = table.raw if isinstance(table, TableRef) else raw_table_name(table)
        path = _path("segments", raw, segment)
        what = f"GET {path}"
        session = await self._session()
        with translate_transport_errors(what):
            response = await session.get(
                self._url(path), timeout=self._stream_timeout, auto_decompress=False
            )
        try:
            if response.status != 200:
                with translate_transport_errors(what):
                    body = await response.content.read(64 << 10)
                raise error_for_status(response.status, what, controller_message(body))
            download = _HttpSegmentDownload(response, table, segment, self._chunk)
            yield download
            if download.finished:
                response.release()  # the connection can serve the next request
        finally:
            response.close()  # no-op after a release; drops a half-read connection

    async def upload_segment(
        self,
        table: TableRef,
        body: UploadBody,
        *,
        segment_name: str,
        allow_refresh: bool = True,
        if_match_crc: int | None = None,
    ) -> UploadResult:
        source = _Source(body)
        part: aiohttp_payload.Payload
        if isinstance(body, bytes | bytearray | memoryview):
            part = aiohttp_payload.BytesPayload(
                bytes(body), content_type="application/octet-stream"
            )
        else:
            part = aiohttp_payload.AsyncIterablePayload(
                source, content_type="application/octet-stream"
            )
            if isinstance(body, SizedStream):
                # The request then carries Content-Length and its chunks go out as they are;
                # the closing boundary is written only once the stream ended without error.
                part._size = body.size
        part.set_content_disposition("form-data", name=segment_name, filename=segment_name)
        form = aiohttp.MultipartWriter("form-data")
        form.append_payload(part)
        headers = {"UPLOAD_TYPE": "SEGMENT"}
        if if_match_crc is not None:
            headers["If-Match"] = str(if_match_crc)
        params = {
            "tableName": table.raw,
            "tableType": table.type.value,
            "allowRefresh": str(allow_refresh).lower(),
        }
        what = "POST /v2/segments"
        session = await self._session()
        try:
            with translate_transport_errors(what):
                async with session.post(
                    self._url("/v2/segments"),
                    params=params,
                    data=form,
                    headers=headers,
                    timeout=self._upload_timeout,
                ) as response:
                    answer = await response.read()
        except DriverError:
            if source.error is not None:
                raise source.error from None  # the source failed, not the controller
            raise
        if response.status >= 300:
            raise error_for_status(response.status, what, controller_message(answer))
        message = str(json.loads(answer).get("status", "")) if answer else ""
        match = _UPLOADED.search(message)
        return UploadResult(table, match.group(1) if match else segment_name, message)

    # --- realtime consumption ---------------------------------------------------------------

    async def pause_consumption(self, table: str, *, comment: str | None = None) -> PauseStatus:
        params = {"comment": comment} if comment is not None else None
        path = _path("tables", table, "pauseConsumption")
        return PauseStatus.from_json(await self._call("POST", path, params=params))

    async def resume_consumption(
        self,
        table: str,
        *,
        consume_from: ConsumeFrom | None = None,
        comment: str | None = None,
    ) -> PauseStatus:
        params: dict[str, str] = {}
        if consume_from is not None:
            params["consumeFrom"] = consume_from.value
        if comment is not None:
            params["comment"] = comment
        path = _path("tables", table, "resumeConsumption")
        return PauseStatus.from_json(await self._call("POST", path, params=params))

    async def pause_status(self, table: str) -> PauseStatus:
        return PauseStatus.from_json(await self._call("GET", _path("tables", table, "pauseStatus")))

    async def consuming_segments(self, table: str) -> ConsumingSegmentsInfo:
        body = await self._call("GET", _path("tables", table, "consumingSegmentsInfo"))
        return ConsumingSegmentsInfo.from_json(body)

    async def consumer_watermarks(self, table: str) -> list[Watermark]:
        body = await self._call("GET", _path("tables", table, "consumerWatermarks"))
        return [
            Watermark(int(w["partitionGroupId"]), int(w["sequenceNumber"]), int(w["offset"]))
            for w in body.get("watermarks", [])
        ]


def _names(body: Any) -> list[str]:
    """The ``instances`` list of an ``Instances`` answer."""
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise Unavailable(f"pinot: not an instance list: {str(body)[:200]!r}")
    return [str(name) for name in body["instances"]]


def error_for_ca(ca_file: str, exc: Exception) -> Misconfigured:
    """A CA file that cannot be loaded is a configuration error, not a transient one."""
    return Misconfigured(f"pinot: cannot load CA file {ca_file!r}: {exc}")
