"""Instances and table status: what a zone health probe asks the controller.

Read from apache/pinot @ 210c2951 (``pinot-controller/src/main/java/org/apache/pinot/controller/``):

``GET /instances[?tag=]`` (``api/resources/PinotInstanceRestletResource.getAllInstances``)
    ``{"instances": [name, ...]}``: every registered instance (``HelixAdmin
    .getInstancesInCluster``; with ``tag``, those carrying it), live or not. Names are
    ``Controller_<host>_<port>``, ``Broker_<host>_<port>``, ``Server_<host>_<port>``,
    ``Minion_<host>_<port>`` (``CommonConstants.Helix.PREFIX_OF_*_INSTANCE``).
``GET /liveinstances`` (``getAllLiveInstances``)
    Same shape: the instances with a Helix ``LIVEINSTANCES`` node, i.e. running and connected
    to ZooKeeper. A registered instance missing here is down.
``GET /instances/{instanceName}`` (``getInstance``)
    ``{"instanceName", "hostName", "enabled", "port", "tags", "pools", "grpcPort",
    "adminPort", "queryServicePort", "queryMailboxPort", ["queriesDisabled": "true"],
    "shutdownInProgress", "systemResourceInfo"}`` (unset ports are -1); 404 ``Instance <name>
    not found``.
``GET /tables/{tableName}/status?type=realtime|offline`` (``PinotTableRestletResource
.getTableStatus``, ``util/TableIngestionStatusHelper``, ``util/ConsumingSegmentInfoReader
.getIngestionStatus``, ``pinot-spi/.../config/table/TableStatus``)
    Pretty-printed ``{"ingestionStatus": {"ingestionState": "HEALTHY"|"UNHEALTHY"|"UNKNOWN",
    "errorMessage": ""}}``. For REALTIME: UNHEALTHY when a CONSUMING segment has no answer
    from any server (``Did not get any response from servers for segment: <s>``), misses one
    of its servers, or a server reports ``NOT_CONSUMING`` (``Segment: <s> is not being
    consumed on server: <server>``); HEALTHY otherwise, also for a paused table with nothing
    consuming. Every failure, even a missing ``type`` (meant as 400), comes back as 500
    ``Failed to get status (ingestion status) for table <t>. Reason: <why>``: the handler's
    ``catch (Exception)`` wraps its own 400s. OFFLINE tables without a
    ``SegmentGenerationAndPushTask`` (all of them here) get that 500 too.

Left out: minions, several brokers or servers, ``queriesDisabled`` and drained states, instance
creation, update, enable/disable and deletion; ``enabled`` stays true.
"""

from __future__ import annotations

from aiohttp import web

from az_agent.emulators.pinot.common import (
    PinotHttpError,
    json_response,
    pretty_json,
    validate_table_type,
    with_type,
)
from az_agent.emulators.pinot.helix import NOT_CONSUMING
from az_agent.emulators.pinot.keys import CLUSTER
from az_agent.emulators.pinot.state import SERVER

routes = web.RouteTableDef()


@routes.get("/instances")
async def instances(request: web.Request) -> web.Response:
    helix = request.app[CLUSTER].helix
    tag = request.query.get("tag")
    names = [r.name for r in helix.instances.values() if tag is None or tag in r.tags]
    return json_response({"instances": names})


@routes.get("/liveinstances")
async def live_instances(request: web.Request) -> web.Response:
    helix = request.app[CLUSTER].helix
    return json_response({"instances": [r.name for r in helix.instances.values() if r.live]})


@routes.get("/instances/{name}")
async def instance(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    record = request.app[CLUSTER].helix.instances.get(name)
    if record is None:
        raise PinotHttpError(404, f"Instance {name} not found")
    return json_response(record.info())


def _ingestion(state: str, error: str = "") -> web.Response:
    body = {"ingestionStatus": {"ingestionState": state, "errorMessage": error}}
    return web.Response(text=pretty_json(body), content_type="application/json")


@routes.get("/tables/{table}/status")
async def table_status(request: web.Request) -> web.Response:
    name = request.match_info["table"]
    try:
        return _table_status(request, name)
    except PinotHttpError as exc:
        raise PinotHttpError(
            500, f"Failed to get status (ingestion status) for table {name}. Reason: {exc.message}"
        ) from exc


def _table_status(request: web.Request, name: str) -> web.Response:
    type_text = request.query.get("type")
    kind = validate_table_type(type_text)
    if kind is None:
        raise PinotHttpError(400, "Table type should either be realtime|offline")
    cluster = request.app[CLUSTER]
    typed = with_type(name, kind)
    table = cluster.state.tables.get(typed)
    if table is None:
        raise PinotHttpError(
            400, f"Specified table name: {name} of type: {type_text} does not exist."
        )
    if kind == "OFFLINE":
        raise PinotHttpError(
            400,
            f"Cannot retrieve ingestion status for Table : {typed} since it does not use the "
            "built-in SegmentGenerationAndPushTask task",
        )
    state = cluster.helix.consumer_state(typed)
    for segment in table.consuming():  # sorted, as the reader's TreeMap
        if state is None:
            return _ingestion(
                "UNHEALTHY", f"Did not get any response from servers for segment: {segment}"
            )
        if state == NOT_CONSUMING:
            return _ingestion(
                "UNHEALTHY", f"Segment: {segment} is not being consumed on server: {SERVER}"
            )
    return _ingestion("HEALTHY")
