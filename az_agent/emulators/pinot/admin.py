"""Emulator-only controls under ``/_emulator/``: commit now, generate, produce, faults, health,
instance liveness, stalled consumers.

Nothing here exists in Pinot; tests, benchmarks and the failover drill use it to make things
happen on cue. Paths take a typed table name, or a raw one (REALTIME preferred).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web

from az_agent.emulators.pinot.cluster import Cluster
from az_agent.emulators.pinot.common import PinotHttpError, json_response
from az_agent.emulators.pinot.helix import NOT_CONSUMING
from az_agent.emulators.pinot.keys import CLUSTER
from az_agent.emulators.pinot.seed import add_history
from az_agent.emulators.pinot.state import GeneratorSpec, TableRecord

routes = web.RouteTableDef()


@dataclass
class Fault:
    """Answer matching requests with ``status`` (after ``delay`` seconds), ``times`` times."""

    pattern: re.Pattern[str]
    method: str | None
    status: int
    times: int
    delay: float
    message: str

    def matches(self, request: web.Request) -> bool:
        if self.times <= 0 or (self.method and self.method != request.method):
            return False
        return self.pattern.search(request.path) is not None


FAULTS = web.AppKey("pinot_faults", list[Fault])


def _table(cluster: Cluster, name: str) -> TableRecord:
    for candidate in (name, f"{name}_REALTIME", f"{name}_OFFLINE"):
        if candidate in cluster.state.tables:
            return cluster.state.tables[candidate]
    raise PinotHttpError(404, f"Table '{name}' not found.")


def _int(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        raise PinotHttpError(400, f"{name} must be an integer") from None


@routes.post("/_emulator/tables/{table}/commit")
async def commit_now(request: web.Request) -> web.Response:
    """Commit the consuming segments (of one ``partition``) and wait until they are DONE."""
    cluster = request.app[CLUSTER]
    table = _table(cluster, request.match_info["table"])
    partition = _int(request, "partition", -1)
    committed = await cluster.commit_consuming(table.name, None if partition < 0 else partition)
    return json_response({"committed": committed})


@routes.post("/_emulator/tables/{table}/generate")
async def generate_now(request: web.Request) -> web.Response:
    """Produce ``count`` complete segments now (commits for REALTIME, pushes for OFFLINE)."""
    cluster = request.app[CLUSTER]
    table = _table(cluster, request.match_info["table"])
    made = [await cluster.produce_segment(table.name) for _ in range(_int(request, "count", 1))]
    return json_response({"segments": [n for n in made if n]})


@routes.post("/_emulator/tables/{table}/history")
async def history(request: web.Request) -> web.Response:
    """Add ``count`` segments of metadata only, fast (:func:`~.seed.add_history`)."""
    cluster = request.app[CLUSTER]
    async with cluster.lock:
        table = _table(cluster, request.match_info["table"])
        names = add_history(cluster, table, _int(request, "count", 1))
    await cluster.save()
    return json_response({"added": len(names), "segments": len(table.segments)})


@routes.put("/_emulator/tables/{table}/generator")
async def set_generator(request: web.Request) -> web.Response:
    """Generate segments on a timer: ``rate`` per minute (0 stops), ``size`` bytes each."""
    cluster = request.app[CLUSTER]
    try:
        rate = float(request.query.get("rate", "0"))
    except ValueError:
        raise PinotHttpError(400, "rate must be a number") from None
    size = _int(request, "size", cluster.options.segment_size)
    async with cluster.lock:
        table = _table(cluster, request.match_info["table"])
        cluster.set_generator(table, GeneratorSpec(rate, size) if rate > 0 else None)
    await cluster.save()
    return json_response({"table": table.name, "ratePerMin": rate, "sizeBytes": size})


@routes.post("/_emulator/tables/{table}/produce")
async def produce(request: web.Request) -> web.Response:
    """Advance the table's topic by ``count`` offsets (on one ``partition``, or on all)."""
    cluster = request.app[CLUSTER]
    count = _int(request, "count", 1)
    async with cluster.lock:
        heads = cluster.topic_of(_table(cluster, request.match_info["table"]))
        partition = request.query.get("partition")
        for index in range(len(heads)):
            if partition is None or str(index) == partition:
                heads[index] += count
        snapshot = list(heads)
    await cluster.save()
    return json_response({"offsets": snapshot})


@routes.put("/_emulator/health")
async def set_health(request: web.Request) -> web.Response:
    request.app[CLUSTER].health = request.query.get("status", "GOOD").upper()
    return json_response({"status": request.app[CLUSTER].health})


@routes.put("/_emulator/instances/{name}")
async def set_instance(request: web.Request) -> web.Response:
    """``live=false`` takes an instance out of ``/liveinstances`` (a dead broker or server; a
    dead server answers no consuming-segment query and commits nothing); ``live=true`` back."""
    helix = request.app[CLUSTER].helix
    record = helix.instances.get(request.match_info["name"])
    if record is None:
        raise PinotHttpError(404, f"Instance {request.match_info['name']} not found")
    record.live = request.query.get("live", "true").lower() == "true"
    return json_response(record.info() | {"live": record.live})


@routes.put("/_emulator/tables/{table}/consumer")
async def set_consumer(request: web.Request) -> web.Response:
    """``state=NOT_CONSUMING`` makes the table's consumers report a stalled stream (and commit
    nothing); ``state=CONSUMING`` lifts it."""
    cluster = request.app[CLUSTER]
    table = cluster.realtime_table(request.match_info["table"])
    state = request.query.get("state", "CONSUMING").upper()
    if state not in ("CONSUMING", NOT_CONSUMING):
        raise PinotHttpError(400, "state must be CONSUMING or NOT_CONSUMING")
    if state == NOT_CONSUMING:
        cluster.helix.stalled.add(table.name)
    else:
        cluster.helix.stalled.discard(table.name)
    return json_response({"table": table.name, "consumerState": state})


@routes.post("/_emulator/faults")
async def add_fault(request: web.Request) -> web.Response:
    """Body ``{"path": regex, "method", "status": 503, "times": 1, "delay": 0, "message"}``.

    ``status`` 0 with a ``delay`` only slows matching requests down."""
    body = await request.json()
    fault = Fault(
        pattern=re.compile(str(body["path"])),
        method=body.get("method"),
        status=int(body.get("status", 503)),
        times=int(body.get("times", 1)),
        delay=float(body.get("delay", 0)),
        message=str(body.get("message", "injected by the pinot emulator")),
    )
    request.app[FAULTS].append(fault)
    return json_response({"faults": len(request.app[FAULTS])})


@routes.delete("/_emulator/faults")
async def clear_faults(request: web.Request) -> web.Response:
    request.app[FAULTS].clear()
    return json_response({"faults": 0})


@routes.get("/_emulator/faults")
async def list_faults(request: web.Request) -> web.Response:
    """The faults still armed, with how many more requests each will hit."""
    return json_response(
        [
            {"path": f.pattern.pattern, "method": f.method, "status": f.status, "times": f.times}
            for f in request.app[FAULTS]
        ]
    )
