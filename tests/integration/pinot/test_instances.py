"""The instance API and table status, as a zone health probe reads them: shapes as Pinot's
controller sends them, liveness a test can change, the client's typed views."""

from __future__ import annotations

import json

import pytest

from az_agent.drivers.errors import Unavailable
from az_agent.drivers.pinot import (
    HttpPinotController,
    IngestionState,
    InstanceKind,
    TableRef,
    TableType,
)
from az_agent.emulators.pinot import PinotEmulator
from tests.integration.pinot.support import RawHttp

SERVER = "Server_127.0.0.1_8098"
BROKER = "Broker_127.0.0.1_8099"
EVENTS = TableRef("events", TableType.REALTIME)


def _controller(emulator: PinotEmulator) -> str:
    return f"Controller_127.0.0.1_{emulator.url.rsplit(':', 1)[1]}"


async def test_instances_and_live_instances(http: RawHttp, emulator: PinotEmulator) -> None:
    status, kind, body = await http.call("GET", "/instances")
    assert (status, kind) == (200, "application/json")
    assert body == {"instances": [BROKER, SERVER, _controller(emulator)]}
    assert await http.text("/liveinstances") == json.dumps(body, separators=(",", ":"))
    _, _, tagged = await http.call("GET", "/instances?tag=DefaultTenant_BROKER")
    assert tagged == {"instances": [BROKER]}

    await http.admin("PUT", f"/instances/{BROKER}?live=false")
    _, _, live = await http.call("GET", "/liveinstances")
    assert live == {"instances": [SERVER, _controller(emulator)]}
    _, _, registered = await http.call("GET", "/instances")
    assert BROKER in registered["instances"], "a dead instance stays registered"


async def test_one_instance_config(http: RawHttp) -> None:
    status, _, body = await http.call("GET", f"/instances/{SERVER}")
    assert status == 200
    assert list(body) == [
        "instanceName",
        "hostName",
        "enabled",
        "port",
        "tags",
        "pools",
        "grpcPort",
        "adminPort",
        "queryServicePort",
        "queryMailboxPort",
        "shutdownInProgress",
        "systemResourceInfo",
    ]
    assert body["instanceName"] == SERVER
    assert (body["hostName"], body["port"], body["enabled"]) == ("127.0.0.1", 8098, True)
    assert body["tags"] == ["DefaultTenant_OFFLINE", "DefaultTenant_REALTIME"]
    _, _, broker = await http.call("GET", f"/instances/{BROKER}")
    assert (broker["grpcPort"], broker["adminPort"]) == (-1, -1)
    assert await http.call("GET", "/instances/Broker_nowhere_1") == (
        404,
        "application/json",
        {"code": 404, "error": "Instance Broker_nowhere_1 not found"},
    )


async def test_table_status_pretty_and_healthy(http: RawHttp) -> None:
    text = await http.text("/tables/events/status?type=realtime")
    assert text == (
        "{\n"
        '  "ingestionStatus" : {\n'
        '    "ingestionState" : "HEALTHY",\n'
        '    "errorMessage" : ""\n'
        "  }\n"
        "}"
    )


async def test_table_status_when_the_server_is_down_or_stalled(
    http: RawHttp, client: HttpPinotController
) -> None:
    consuming = sorted((await client.pause_status("events")).consuming_segments)
    await http.admin("PUT", "/tables/events/consumer?state=NOT_CONSUMING")
    stalled = await client.ingestion_status(EVENTS)
    assert stalled.state is IngestionState.UNHEALTHY
    assert stalled.error == f"Segment: {consuming[0]} is not being consumed on server: {SERVER}"
    info = await client.consuming_segments("events")
    assert {c.state for infos in info.segments.values() for c in infos} == {"NOT_CONSUMING"}

    await http.admin("PUT", "/tables/events/consumer?state=CONSUMING")
    await http.admin("PUT", f"/instances/{SERVER}?live=false")
    dead = await client.ingestion_status(EVENTS)
    assert dead.state is IngestionState.UNHEALTHY
    assert dead.error == f"Did not get any response from servers for segment: {consuming[0]}"
    info = await client.consuming_segments("events")
    assert info.segments == {name: () for name in consuming}
    assert info.servers_failing_to_respond == 1
    # A dead server consumes nothing: nothing commits.
    assert await http.admin("POST", "/tables/events/commit") == {"committed": []}

    await http.admin("PUT", f"/instances/{SERVER}?live=true")
    assert (await client.ingestion_status(EVENTS)).state is IngestionState.HEALTHY


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "Table type should either be realtime|offline"),
        ("?type=nope", "Illegal table type 'nope'"),
    ],
)
async def test_table_status_errors_are_500(http: RawHttp, query: str, reason: str) -> None:
    status, _, body = await http.call("GET", f"/tables/events/status{query}")
    prefix = "Failed to get status (ingestion status) for table events. Reason: "
    assert (status, body) == (500, {"code": 500, "error": prefix + reason})


async def test_table_status_of_missing_and_offline_tables(http: RawHttp) -> None:
    _, _, missing = await http.call("GET", "/tables/nope/status?type=realtime")
    assert missing["error"].endswith(
        "Reason: Specified table name: nope of type: realtime does not exist."
    )
    status, _, offline = await http.call("GET", "/tables/logs/status?type=offline")
    assert status == 500
    assert "does not use the built-in SegmentGenerationAndPushTask task" in offline["error"]


async def test_client_instances(http: RawHttp, client: HttpPinotController) -> None:
    await http.admin("PUT", f"/instances/{BROKER}?live=false")
    instances = await client.instances()
    assert instances.of_kind(InstanceKind.BROKER) == [BROKER]
    assert instances.down_of_kind(InstanceKind.BROKER) == [BROKER]
    assert instances.live_of_kind(InstanceKind.SERVER) == [SERVER]
    assert len(instances.live_of_kind(InstanceKind.CONTROLLER)) == 1
    assert InstanceKind.of("Minion_h_1") is InstanceKind.MINION
    assert InstanceKind.of("zk_h_1") is None


async def test_client_errors_are_translated(http: RawHttp, client: HttpPinotController) -> None:
    with pytest.raises(Unavailable, match="does not exist"):
        await client.ingestion_status(TableRef("nope", TableType.REALTIME))
    await http.admin(
        "POST", "/faults", json={"path": "^/liveinstances$", "status": 503, "times": 1}
    )
    with pytest.raises(Unavailable):
        await client.instances()
