"""Health, tables and schemas: the client against the emulator, and the wire shapes directly."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from az_agent.drivers.errors import NotFound, Unavailable
from az_agent.drivers.pinot import (
    Conflict,
    HttpPinotController,
    RequestRejected,
    TableRef,
    TableType,
)
from az_agent.emulators.pinot import PinotEmulator
from tests.integration.pinot.support import RawHttp

SCHEMA: dict[str, Any] = {
    "schemaName": "metrics",
    "dimensionFieldSpecs": [{"name": "host", "dataType": "STRING"}],
    "metricFieldSpecs": [{"name": "value", "dataType": "DOUBLE"}],
    "dateTimeFieldSpecs": [
        {
            "name": "ts",
            "dataType": "LONG",
            "format": "1:MILLISECONDS:EPOCH",
            "granularity": "1:MILLISECONDS",
        }
    ],
}
REALTIME_CONFIG: dict[str, Any] = {
    "tableName": "metrics",
    "tableType": "REALTIME",
    "segmentsConfig": {"timeColumnName": "ts", "replication": 1},
    "tenants": {},
    "tableIndexConfig": {},
    "ingestionConfig": {
        "streamIngestionConfig": {
            "streamConfigMaps": [
                {
                    "streamType": "kafka",
                    "stream.kafka.topic.name": "metrics-topic",
                    "stream.kafka.decoder.class.name": "x.JSONMessageDecoder",
                    "stream.kafka.consumer.prop.auto.offset.reset": "smallest",
                }
            ]
        }
    },
}


async def test_health_follows_controller_status(client: HttpPinotController, http: RawHttp) -> None:
    await client.health()
    assert await http.call("GET", "/health") == (200, "text/plain", "OK")
    await http.admin("PUT", "/health?status=STARTING")
    status, content_type, body = await http.call("GET", "/health")
    assert (status, content_type) == (503, "text/plain")
    assert body == "Pinot controller status is STARTING"
    with pytest.raises(Unavailable, match="STARTING"):
        await client.health()


async def test_list_tables_raw_and_typed(client: HttpPinotController, http: RawHttp) -> None:
    assert await client.list_tables() == [
        TableRef("events", TableType.REALTIME),
        TableRef("logs", TableType.OFFLINE),
    ]
    assert await client.list_tables(TableType.OFFLINE) == [TableRef("logs", TableType.OFFLINE)]
    assert await http.call("GET", "/tables") == (
        200,
        "application/json",
        {"tables": ["events", "logs"]},
    )
    assert (await http.call("GET", "/tables?type=realtime"))[2] == {"tables": ["events_REALTIME"]}
    status, _, body = await http.call("GET", "/tables?type=foo")
    assert status == 500
    assert body == {
        "code": 500,
        "error": "No enum constant org.apache.pinot.spi.config.table.TableType.FOO",
    }


async def test_table_configs_by_raw_and_typed_name(
    client: HttpPinotController, http: RawHttp
) -> None:
    configs = await client.table_configs("events")
    assert list(configs) == [TableType.REALTIME]
    assert configs[TableType.REALTIME]["tableName"] == "events_REALTIME"
    assert list(await client.table_configs("events_REALTIME")) == [TableType.REALTIME]
    with pytest.raises(NotFound, match="Table events_OFFLINE does not exist"):
        await client.table_configs("events", TableType.OFFLINE)
    status, _, body = await http.call("GET", "/tables/nope")
    assert (status, body) == (404, {"code": 404, "error": "Table nope does not exist"})


async def test_schemas_read_pretty_with_field_types(
    client: HttpPinotController, http: RawHttp
) -> None:
    schema = await client.table_schema("events_REALTIME")
    assert schema == await client.schema("events")
    assert schema["enableColumnBasedNullHandling"] is False
    assert {spec["fieldType"] for spec in schema["dimensionFieldSpecs"]} == {"DIMENSION"}
    text = await http.text("/schemas/events")
    assert text.startswith(
        '{\n  "schemaName" : "events",\n  "enableColumnBasedNullHandling" : false,'
    )
    assert '"dimensionFieldSpecs" : [ {\n    "name" : "service",' in text
    assert '    "fieldType" : "DIMENSION"\n  }, {\n' in text
    with pytest.raises(NotFound, match="Schema not found"):
        await client.schema("missing")
    with pytest.raises(NotFound, match="Schema not found for table: missing"):
        await client.table_schema("missing")
    assert (await http.call("GET", "/schemas"))[2] == ["events", "logs"]


async def test_create_schema_rules(client: HttpPinotController, http: RawHttp) -> None:
    await client.create_schema(SCHEMA)
    await client.create_schema(SCHEMA)  # equal: a no-op
    with pytest.raises(Conflict, match="Schema: metrics already exists"):
        await client.create_schema(SCHEMA, override=False)
    widened = copy.deepcopy(SCHEMA)
    widened["dimensionFieldSpecs"].append({"name": "zone", "dataType": "STRING"})
    await client.create_schema(widened)
    with pytest.raises(RequestRejected, match="not backward-compatible"):
        await client.create_schema(SCHEMA)  # drops "zone"
    await client.create_schema(SCHEMA, force=True)
    assert [s["name"] for s in (await client.schema("metrics"))["dimensionFieldSpecs"]] == ["host"]
    status, _, body = await http.call("POST", "/schemas", json={"dimensionFieldSpecs": []})
    assert (status, body["error"]) == (
        400,
        "Invalid schema. Reason: 'schemaName' should not be null or empty",
    )
    status, _, body = await http.call(
        "POST", "/schemas", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert body["error"].startswith("Invalid schema config json string: {nope. Reason:")


async def test_create_realtime_table_starts_consuming(
    client: HttpPinotController, http: RawHttp
) -> None:
    with pytest.raises(RequestRejected, match="Failed to find schema for table: metrics_REALTIME"):
        await client.create_table(REALTIME_CONFIG)
    await client.create_schema(SCHEMA)
    table = await client.create_table(REALTIME_CONFIG)
    assert table == TableRef("metrics", TableType.REALTIME)
    stored = (await client.table_configs("metrics"))[TableType.REALTIME]
    assert stored["tableName"] == "metrics_REALTIME"
    assert stored["segmentsConfig"]["replication"] == "1"
    assert stored["tenants"] == {"broker": "DefaultTenant", "server": "DefaultTenant"}
    segments = await client.segments(table)
    # A topic the emulator did not know gets 2 partitions; one seq-0 consuming segment each.
    assert sorted((s.llc_name.partition, s.llc_name.sequence) for s in segments if s.llc_name) == [
        (0, 0),
        (1, 0),
    ]
    assert {s.status.value for s in segments} == {"IN_PROGRESS"}
    assert {s.start_offset for s in segments} == {"0"}
    with pytest.raises(Conflict, match="Table config for metrics_REALTIME already exists"):
        await client.create_table(REALTIME_CONFIG)
    status, _, body = await http.call("POST", "/tables", json=REALTIME_CONFIG | {"tableName": "x"})
    assert (status, body["error"]) == (400, "Failed to find schema for table: x_REALTIME")


async def test_create_table_validation(client: HttpPinotController, http: RawHttp) -> None:
    await client.create_schema(SCHEMA)
    no_time = copy.deepcopy(REALTIME_CONFIG)
    del no_time["segmentsConfig"]["timeColumnName"]
    with pytest.raises(RequestRejected, match="'timeColumnName' cannot be null"):
        await client.create_table(no_time)
    wrong_time = copy.deepcopy(REALTIME_CONFIG)
    wrong_time["segmentsConfig"]["timeColumnName"] = "host"
    with pytest.raises(RequestRejected, match="Cannot find valid fieldSpec for timeColumn: host"):
        await client.create_table(wrong_time)
    missing = {k: v for k, v in REALTIME_CONFIG.items() if k != "tableIndexConfig"}
    status, _, body = await http.call("POST", "/tables", json=missing)
    assert (status, body["error"]) == (
        400,
        "Missing required creator property 'tableIndexConfig' (index 4)",
    )
    offline = {
        "tableName": "metrics",
        "tableType": "offline",
        "segmentsConfig": {"replication": "1"},
        "tenants": {},
        "tableIndexConfig": {},
    }
    assert await client.create_table(offline) == TableRef("metrics", TableType.OFFLINE)
    assert await client.segments(TableRef("metrics", TableType.OFFLINE)) == []


async def test_delete_table_keeps_schema(
    emulator: PinotEmulator, client: HttpPinotController, http: RawHttp
) -> None:
    await http.admin("POST", "/tables/logs/generate")
    blob_dir = emulator.data_dir / "deepstore" / "logs"
    assert len(list(blob_dir.iterdir())) == 1
    status, _, body = await http.call("DELETE", "/tables/logs?type=realtime")
    assert (status, body["error"]) == (404, "Table 'logs' with type REALTIME does not exist")
    status, _, body = await http.call("DELETE", "/tables/logs")
    assert (status, body) == (200, {"status": "Tables: [logs_OFFLINE] deleted"})
    assert list(blob_dir.iterdir()) == []
    assert await client.list_tables() == [TableRef("events", TableType.REALTIME)]
    assert (await client.schema("logs"))["schemaName"] == "logs"
    status, _, body = await http.call("DELETE", "/schemas/events")
    assert (status, body["error"]) == (
        409,
        "Cannot delete schema events, as it is associated with table events_REALTIME",
    )
    assert (await http.call("DELETE", "/schemas/logs"))[2] == {"status": "Schema logs deleted"}
