"""Pause, resume and the state of consumption (§5 of the reference)."""

from __future__ import annotations

from aiohttp import web

from az_agent.emulators.pinot.common import PinotHttpError, json_response, pause_details
from az_agent.emulators.pinot.keys import CLUSTER
from az_agent.emulators.pinot.state import SERVER, JsonObject, TableRecord, now_ms

_CONSUME_FROM = ("smallest", "largest")
routes = web.RouteTableDef()


@routes.post("/tables/{table}/pauseConsumption")
async def pause(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    body = await cluster.pause(request.match_info["table"], request.query.get("comment"))
    return json_response(body)


@routes.post("/tables/{table}/resumeConsumption")
async def resume(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    consume_from = request.query.get("consumeFrom")
    cluster.realtime_table(request.match_info["table"])  # 404 first, as validateTable does
    if consume_from is not None and consume_from.lower() == "lastconsumed":
        consume_from = None
    if consume_from is not None and consume_from.lower() not in _CONSUME_FROM:
        raise PinotHttpError(
            400,
            f"consumeFrom param '{consume_from}' is not valid. Valid values are 'lastConsumed', "
            "'smallest' and 'largest'.",
        )
    body = await cluster.resume(
        request.match_info["table"],
        consume_from.lower() if consume_from else None,
        request.query.get("comment"),
    )
    return json_response(body)


@routes.get("/tables/{table}/pauseStatus")
async def pause_status(request: web.Request) -> web.Response:
    table = request.app[CLUSTER].realtime_table(request.match_info["table"])
    pause = table.pause
    if pause is None:
        return json_response(pause_details(False, table.consuming(), "Table is unpaused.", ""))
    default = "Table is paused." if pause.paused else "Table is unpaused."
    return json_response(
        pause_details(pause.paused, table.consuming(), pause.comment or default, pause.timestamp)
    )


def _consuming_info(table: TableRecord, heads: list[int], state: str | None) -> JsonObject:
    """Per consuming segment, the server's report; ``[]`` when the server does not answer
    (``state`` None), as ``ConsumingSegmentInfoReader`` fills in segments nobody reported."""
    infos: JsonObject = {}
    for name in table.consuming():
        if state is None:
            infos[name] = []
            continue
        zk = table.segments[name].zk
        partition = name.split("__")[1]
        start = int(zk.get("segment.realtime.startOffset", "0"))
        head = heads[int(partition)] if int(partition) < len(heads) else start
        current = str(max(start, head))
        infos[name] = [
            {
                "serverName": SERVER,
                "consumerState": state,
                "lastConsumedTimestamp": now_ms(),
                "partitionToOffsetMap": {partition: current},
                "partitionOffsetInfo": {
                    "currentOffsetsMap": {partition: current},
                    "latestUpstreamOffsetMap": {partition: str(max(start, head))},
                    "recordsLagMap": {partition: "0"},
                    "availabilityLagMsMap": {partition: "0"},
                },
            }
        ]
    return infos


@routes.get("/tables/{table}/consumingSegmentsInfo")
async def consuming_segments_info(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    name = request.match_info["table"]
    prefix = f"Failed to get consuming segments info for table {name}."
    if name.endswith("_OFFLINE"):
        raise PinotHttpError(
            500, f"{prefix} Cannot get consuming segments info for OFFLINE table: {name}"
        )
    typed = name if name.endswith("_REALTIME") else f"{name}_REALTIME"
    table = cluster.state.tables.get(typed)
    if table is None:
        raise PinotHttpError(500, f"{prefix} Ideal state does not exist for table: {typed}")
    state = cluster.helix.consumer_state(typed)
    return json_response(
        {
            "_segmentToConsumingInfoMap": _consuming_info(table, cluster.topic_of(table), state),
            "serversFailingToRespond": 1 if state is None and table.segments else 0,
            "serversUnparsableRespond": 0,
        }
    )


@routes.get("/tables/{table}/consumerWatermarks")
async def consumer_watermarks(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    name = request.match_info["table"]
    typed = name if name.endswith("_REALTIME") else f"{name}_REALTIME"
    table = cluster.state.tables.get(typed)
    if table is None:
        raise PinotHttpError(404, f"Table {typed} does not exist")
    marks = []
    for partition, (llc, record) in sorted(table.latest_per_partition().items()):
        zk = record.zk
        if zk.get("segment.realtime.status") == "DONE":
            sequence, offset = llc.sequence + 1, zk.get("segment.realtime.endOffset", "0")
        else:
            sequence, offset = llc.sequence, zk.get("segment.realtime.startOffset", "0")
        marks.append(
            {"partitionGroupId": partition, "sequenceNumber": sequence, "offset": int(offset)}
        )
    return json_response({"watermarks": marks})


@routes.post("/tables/{table}/forceCommit")
async def force_commit(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    async with cluster.lock:
        table = cluster.realtime_table(request.match_info["table"])
        cluster.force_commit(table)
    job = f"{table.name}-{now_ms()}"
    return json_response(
        {"forceCommitStatus": "SUCCESS", "jobMetaZKWriteStatus": "SUCCESS", "forceCommitJobId": job}
    )
