"""``probe_zone`` against the Pinot emulator and a real PostgreSQL: each check turns false
when its thing is down, and no check raises or outlasts its limit."""

from __future__ import annotations

import time

from pydantic import SecretStr

from az_agent.agent.standby.health import probe_zone
from az_agent.drivers.pinot import HttpPinotController
from az_agent.drivers.postgres.dumper import PgDumper
from az_agent.sandbox.postgres import free_port
from az_agent.state import HealthCheck
from tests.integration.pinot.support import RawHttp
from tests.servers.postgres import PostgresServer

SERVER = "Server_127.0.0.1_8098"
BROKER = "Broker_127.0.0.1_8099"
PINOT_CHECKS = ["ingestion", "pinot-brokers", "pinot-controller", "pinot-servers"]


def _failing(checks: dict[str, HealthCheck]) -> list[str]:
    return sorted(name for name, check in checks.items() if not check.ok)


async def test_a_healthy_zone(pinot: HttpPinotController) -> None:
    checks = await probe_zone(pinot, None)
    assert sorted(checks) == PINOT_CHECKS, "no postgres check without databases"
    assert _failing(checks) == []
    assert checks["pinot-brokers"].detail == "1/1 brokers live"
    assert checks["ingestion"].detail == "1 realtime tables consuming, 0 paused"


async def test_a_dead_broker(pinot: HttpPinotController, http: RawHttp) -> None:
    await http.admin("PUT", f"/instances/{BROKER}?live=false")
    checks = await probe_zone(pinot, None)
    assert _failing(checks) == ["pinot-brokers"]
    assert checks["pinot-brokers"].detail == f"0/1 brokers live; down: {BROKER}"


async def test_a_dead_server_stops_ingestion_too(pinot: HttpPinotController, http: RawHttp) -> None:
    await http.admin("PUT", f"/instances/{SERVER}?live=false")
    checks = await probe_zone(pinot, None)
    assert _failing(checks) == ["ingestion", "pinot-servers"]
    assert "Did not get any response from servers for segment" in checks["ingestion"].detail


async def test_a_stalled_stream(pinot: HttpPinotController, http: RawHttp) -> None:
    await http.admin("PUT", "/tables/events/consumer?state=NOT_CONSUMING")
    checks = await probe_zone(pinot, None)
    assert _failing(checks) == ["ingestion"]
    assert checks["ingestion"].detail.startswith("events_REALTIME: UNHEALTHY Segment: events__")


async def test_a_paused_table_is_not_held_against_the_zone(
    pinot: HttpPinotController, http: RawHttp
) -> None:
    await pinot.pause_consumption("events")
    await http.admin("PUT", "/tables/events/consumer?state=NOT_CONSUMING")
    checks = await probe_zone(pinot, None)
    assert _failing(checks) == []
    assert checks["ingestion"].detail == "0 realtime tables consuming, 1 paused"


async def test_only_configured_tables_count(pinot: HttpPinotController, http: RawHttp) -> None:
    await http.admin("PUT", "/tables/events/consumer?state=NOT_CONSUMING")
    checks = await probe_zone(pinot, None, tables=["other"])
    assert _failing(checks) == []


async def test_an_unreachable_controller_fails_every_pinot_check() -> None:
    async with HttpPinotController(f"http://127.0.0.1:{free_port()}") as gone:
        checks = await probe_zone(gone, None)
    assert _failing(checks) == PINOT_CHECKS
    assert checks["pinot-controller"].detail.startswith("Unavailable: ")


async def test_an_unhealthy_controller(pinot: HttpPinotController, http: RawHttp) -> None:
    await http.admin("PUT", "/health?status=STARTING")
    checks = await probe_zone(pinot, None)
    assert _failing(checks) == ["pinot-controller"]
    assert "STARTING" in checks["pinot-controller"].detail


async def test_a_slow_controller_is_cut_at_the_limit(
    pinot: HttpPinotController, http: RawHttp
) -> None:
    fault = {"path": "^/liveinstances$", "status": 0, "delay": 5, "times": 1}
    await http.admin("POST", "/faults", json=fault)
    started = time.monotonic()
    checks = await probe_zone(pinot, None, limit_seconds=0.5)
    assert time.monotonic() - started < 2
    assert _failing(checks) == ["pinot-brokers", "pinot-servers"]
    assert checks["pinot-servers"].detail == "no answer within 0.5s"


async def test_postgres_up_and_down(pinot: HttpPinotController, zone1: PostgresServer) -> None:
    up = PgDumper(zone1.settings(), SecretStr(zone1.password))
    checks = await probe_zone(pinot, up.ping)
    assert checks["postgres"] == HealthCheck(ok=True, detail="answers")
    down = PgDumper(zone1.settings(port=free_port()), SecretStr(zone1.password))
    checks = await probe_zone(pinot, down.ping)
    assert _failing(checks) == ["postgres"]
    assert checks["postgres"].detail.startswith("Unavailable: ")
