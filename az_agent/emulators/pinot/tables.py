"""Health, tables and schemas (§1 and §11 of the reference)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from az_agent.emulators.pinot.cluster import Cluster, stream_config
from az_agent.emulators.pinot.common import (
    TYPES,
    PinotHttpError,
    json_response,
    pretty_json,
    query_flag,
    raw_name,
    table_type_of,
    validate_table_type,
    with_type,
)
from az_agent.emulators.pinot.keys import CLUSTER
from az_agent.emulators.pinot.state import JsonObject, TableRecord

_REQUIRED = ("tableName", "tableType", "segmentsConfig", "tenants", "tableIndexConfig")
_CONFIG_CLASS = "`org.apache.pinot.spi.config.table.TableConfig`"
_FIELD_TYPES = {
    "dimensionFieldSpecs": "DIMENSION",
    "metricFieldSpecs": "METRIC",
    "dateTimeFieldSpecs": "DATE_TIME",
    "complexFieldSpecs": "COMPLEX",
}
routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    if cluster.health != "GOOD":
        return web.Response(status=503, text=f"Pinot controller status is {cluster.health}")
    return web.Response(text="OK")


@routes.get("/tables")
async def list_tables(request: web.Request) -> web.Response:
    tables = request.app[CLUSTER].state.tables
    kind_text = request.query.get("type")
    sort_asc = query_flag(request, "sortAsc", True)
    if kind_text is None:
        names = sorted({t.raw for t in tables.values()}, reverse=not sort_asc)
        return json_response({"tables": names})
    kind = "OFFLINE" if kind_text.lower() == "dimension" else kind_text.upper()
    if kind not in TYPES:
        raise PinotHttpError(
            500, f"No enum constant org.apache.pinot.spi.config.table.TableType.{kind}"
        )
    selected = [
        t.name
        for t in tables.values()
        if t.type == kind and (kind_text.lower() != "dimension" or t.config.get("isDimTable"))
    ]
    return json_response({"tables": sorted(selected, reverse=not sort_asc)})


@routes.get("/tables/{table}")
async def table_configs(request: web.Request) -> web.Response:
    name = request.match_info["table"]
    kind = request.query.get("type")
    tables = request.app[CLUSTER].state.tables
    found: JsonObject = {}
    for candidate in TYPES:
        if kind is None or kind.upper() == candidate:
            table = tables.get(with_type(name, candidate))
            if table is not None:
                found[candidate] = table.config
    if not found:
        shown = f"{name}_{kind.upper()}" if kind is not None else name
        raise PinotHttpError(404, f"Table {shown} does not exist")
    return json_response(found)


@routes.get("/tables/{table}/schema")
async def table_schema(request: web.Request) -> web.Response:
    name = raw_name(request.match_info["table"])
    schema = request.app[CLUSTER].state.schemas.get(name)
    if schema is None:
        raise PinotHttpError(404, f"Schema not found for table: {request.match_info['table']}")
    return web.Response(
        text=pretty_json(normalized_schema(schema)), content_type="application/json"
    )


def _invalid_config(problem: str) -> PinotHttpError:
    return PinotHttpError(400, f"Cannot construct instance of {_CONFIG_CLASS}, problem: {problem}")


def _parse_table_config(text: str) -> tuple[JsonObject, str]:
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise PinotHttpError(400, str(exc)) from exc
    if not isinstance(config, dict):
        raise PinotHttpError(400, "Cannot deserialize table config from a non-object")
    for index, key in enumerate(_REQUIRED):
        if key not in config:
            raise PinotHttpError(400, f"Missing required creator property '{key}' (index {index})")
    if "__" in str(config["tableName"]):
        raise _invalid_config("'tableName' cannot contain double underscore ('__')")
    kind = str(config["tableType"]).upper()
    if kind not in TYPES:
        raise _invalid_config(
            f"No enum constant org.apache.pinot.spi.config.table.TableType.{kind}"
        )
    return config, kind


def _validate_table(config: JsonObject, name: str, kind: str, schema: JsonObject) -> None:
    segments = config.get("segmentsConfig") or {}
    time_column = segments.get("timeColumnName")
    if kind == "REALTIME" and not time_column:
        raise PinotHttpError(400, "'timeColumnName' cannot be null in REALTIME table config")
    time_columns = {spec.get("name") for spec in schema.get("dateTimeFieldSpecs") or []}
    if schema.get("timeFieldSpec"):
        time_columns.add((schema["timeFieldSpec"].get("incomingGranularitySpec") or {}).get("name"))
    if time_column and time_column not in time_columns:
        raise PinotHttpError(
            400,
            f"Cannot find valid fieldSpec for timeColumn: {time_column} from the table config: "
            f"{name}, in the schema: {raw_name(name)}",
        )
    if kind == "REALTIME":
        stream = stream_config(config)
        stream_type = stream.get("streamType", "")
        needed = (
            "streamType",
            f"stream.{stream_type}.topic.name",
            f"stream.{stream_type}.decoder.class.name",
        )
        if not stream_type or any(key not in stream for key in needed):
            raise PinotHttpError(400, "Could not create StreamConfig using the streamConfig map")
    if segments.get("replication") is None:
        raise PinotHttpError(400, "Cannot parse null string: null")


def _normalized_config(config: JsonObject, name: str, kind: str) -> JsonObject:
    stored = dict(config)
    stored["tableName"] = name
    stored["tableType"] = kind
    tenants = dict(stored.get("tenants") or {})
    tenants.setdefault("broker", "DefaultTenant")
    tenants.setdefault("server", "DefaultTenant")
    stored["tenants"] = tenants
    segments = dict(stored["segmentsConfig"])
    segments["replication"] = str(segments["replication"])
    stored["segmentsConfig"] = segments
    stored.setdefault("isDimTable", False)
    return stored


async def create_table(cluster: Cluster, text: str) -> str:
    """``POST /tables`` without HTTP: validate, store, start consuming; the typed name."""
    config, kind = _parse_table_config(text)
    name = with_type(str(config["tableName"]), kind)
    async with cluster.lock:
        if name in cluster.state.tables:
            raise PinotHttpError(
                409,
                f"Table config for {name} already exists. If this is unexpected, try deleting the "
                "table to remove all metadata associated with it before attempting to recreate.",
            )
        schema = cluster.state.schemas.get(raw_name(name))
        if schema is None:
            raise PinotHttpError(400, f"Failed to find schema for table: {name}")
        _validate_table(config, name, kind, schema)
        table = TableRecord(name, _normalized_config(config, name, kind))
        cluster.state.tables[name] = table
        if kind == "REALTIME":
            cluster.start_consuming(table)
    await cluster.save()
    return name


@routes.post("/tables")
async def post_table(request: web.Request) -> web.Response:
    name = await create_table(request.app[CLUSTER], await request.text())
    return json_response(
        {"unrecognizedProperties": {}, "status": f"Table {name} successfully added"}
    )


@routes.delete("/tables/{table}")
async def delete_table(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    name = request.match_info["table"]
    kind = validate_table_type(request.query.get("type"))
    suffix = table_type_of(name)
    if suffix is not None and kind is not None and suffix != kind:
        candidates: list[str] = []
    elif suffix is not None or kind is not None:
        candidates = [with_type(name, suffix or kind or "")]
    else:
        candidates = [f"{name}_{k}" for k in TYPES]
    async with cluster.lock:
        deleted = [c for c in candidates if c in cluster.state.tables]
        blobs = []
        for typed in deleted:
            table = cluster.state.tables.pop(typed)
            cluster.set_generator(table, None)
            blobs += [cluster.store.blob(table.raw, segment) for segment in table.segments]
        await asyncio.to_thread(_unlink_all, blobs)
    if not deleted:
        raise PinotHttpError(404, f"Table '{name}' with type {kind} does not exist")
    await cluster.save()
    return json_response({"status": f"Tables: [{', '.join(deleted)}] deleted"})


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


# --- schemas --------------------------------------------------------------------------------


def normalized_schema(schema: JsonObject) -> JsonObject:
    """The form ``Schema.toPrettyJsonString`` gives: null handling flag, ``fieldType`` filled in."""
    out: JsonObject = {
        "schemaName": schema.get("schemaName"),
        "enableColumnBasedNullHandling": bool(schema.get("enableColumnBasedNullHandling", False)),
    }
    for key, value in schema.items():
        if key in out:
            continue
        if key in _FIELD_TYPES and isinstance(value, list):
            out[key] = [_field_spec(spec, _FIELD_TYPES[key]) for spec in value]
        else:
            out[key] = value
    return out


def _field_spec(spec: JsonObject, field_type: str) -> JsonObject:
    head = {"name": spec.get("name"), "dataType": spec.get("dataType"), "fieldType": field_type}
    return head | {k: v for k, v in spec.items() if k not in head}


def _columns(schema: JsonObject) -> dict[str, tuple[Any, str]]:
    return {
        str(spec.get("name")): (spec.get("dataType"), field_type)
        for key, field_type in _FIELD_TYPES.items()
        for spec in schema.get(key) or []
    }


async def _schema_body(request: web.Request) -> str:
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        part = await reader.next()
        if not isinstance(part, aiohttp.BodyPartReader):
            raise PinotHttpError(400, "Found not exactly one file from the multi-part fields")
        content = await part.read()
        if await reader.next() is not None:
            raise PinotHttpError(400, "Found not exactly one file from the multi-part fields")
        return content.decode("utf-8")
    return await request.text()


@routes.get("/schemas")
async def list_schemas(request: web.Request) -> web.Response:
    return json_response(list(request.app[CLUSTER].state.schemas))


@routes.post("/schemas")
async def post_schema(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    text = await _schema_body(request)
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise PinotHttpError(
            400, f"Invalid schema config json string: {text}. Reason: {exc}"
        ) from exc
    name = schema.get("schemaName") if isinstance(schema, dict) else None
    if not name:
        raise PinotHttpError(
            400, "Invalid schema. Reason: 'schemaName' should not be null or empty"
        )
    if "__" in name:
        raise PinotHttpError(400, "'schemaName' cannot contain double underscore ('__')")
    override = query_flag(request, "override", True)
    force = query_flag(request, "force", False)
    async with cluster.lock:
        stored = cluster.state.schemas.get(name)
        if stored is not None and not override:
            raise PinotHttpError(409, f"Schema: {name} already exists")
        if stored is not None and not force:
            old, new = _columns(stored), _columns(schema)
            if any(new.get(column) != spec for column, spec in old.items()):
                raise PinotHttpError(
                    400,
                    f"New schema: {name} is not backward-compatible with the existing schema.",
                )
        cluster.state.schemas[name] = schema
    await cluster.save()
    return json_response({"unrecognizedProperties": {}, "status": f"{name} successfully added"})


@routes.get("/schemas/{name}")
async def get_schema(request: web.Request) -> web.Response:
    schema = request.app[CLUSTER].state.schemas.get(request.match_info["name"])
    if schema is None:
        raise PinotHttpError(404, "Schema not found")
    return web.Response(
        text=pretty_json(normalized_schema(schema)), content_type="application/json"
    )


@routes.delete("/schemas/{name}")
async def delete_schema(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    name = request.match_info["name"]
    async with cluster.lock:
        if name not in cluster.state.schemas:
            raise PinotHttpError(404, f"Schema {name} not found")
        for kind in TYPES:
            if f"{name}_{kind}" in cluster.state.tables:
                raise PinotHttpError(
                    409,
                    f"Cannot delete schema {name}, as it is associated with table {name}_{kind}",
                )
        del cluster.state.schemas[name]
    await cluster.save()
    return json_response({"status": f"Schema {name} deleted"})
