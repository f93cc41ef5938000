"""The handshake of the reference docs, end to end, then the same steps back.

pause zone 1 -> activate zone 2 with zone=az1 -> poll /status -> resume zone 2, and back.
Nothing may be lost: every segment zone 1 committed is in zone 2's Pinot with the same CRC, the
databases are equal, and consumption in zone 2 continues from zone 1's end offsets.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from az_agent.drivers.pinot.models import TableRef, TableType
from tests.e2e.conftest import (
    DATABASES,
    REALTIME_TABLE,
    TABLE,
    Zone,
    call,
    leads,
    prometheus,
    table_rows,
    wait_for,
)

REALTIME = TableRef(TABLE, TableType.REALTIME)


async def status(zone: Zone) -> dict[str, Any]:
    return await call("GET", f"{zone.url}/status", expect=200)


async def committed(zone: Zone) -> dict[str, str]:
    """Segment name -> CRC of every committed segment of the realtime table."""
    controller = zone.controller()
    try:
        segments = await controller.backup_ready_segments(REALTIME)
    finally:
        await controller.close()
    return {s.name: str(s.crc) for s in segments}


async def consumption(zone: Zone) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition: the end offset of the newest committed segment, and where the consuming
    segment starts."""
    controller = zone.controller()
    try:
        segments = await controller.segments(REALTIME)
    finally:
        await controller.close()
    ends: dict[int, tuple[int, int]] = {}
    starts: dict[int, int] = {}
    for segment in segments:
        name = segment.llc_name
        assert name is not None
        if segment.is_backup_ready:
            assert segment.end_offset is not None
            newest = ends.get(name.partition)
            if newest is None or name.sequence > newest[0]:
                ends[name.partition] = (name.sequence, int(segment.end_offset))
        elif segment.start_offset is not None:
            starts[name.partition] = int(segment.start_offset)
    return {p: end for p, (_, end) in ends.items()}, starts


async def fully_backed_up(zone: Zone) -> bool:
    """The zone's leader session runs and its catalog holds every segment Pinot committed.

    ``leader`` (the lease) comes before the session, and the recovery point is only 0 once the
    session has looked at Pinot, so the catalog itself is what is checked."""
    body = await status(zone)
    if not body["leading"] or body["rpoSeconds"]["segments"] != 0:
        return False
    assert zone.agent is not None
    session = zone.agent.session
    if session is None:  # ended since /status answered: not backed up now
        return False
    backed = {(r.name, r.crc) for r in session.catalog.segments()}
    return set((await committed(zone)).items()) <= backed


async def in_state(zone: Zone, state: str) -> bool:
    return bool((await status(zone))["state"] == state)


async def operation_done(zone: Zone) -> dict[str, Any] | None:
    body = await status(zone)
    operation = body["operation"]
    assert operation is not None
    assert operation["status"] != "failed", operation
    if body["state"] == "ACTIVE" and operation["status"] == "succeeded":
        return body
    return None


async def active_silences(alertmanager_url: str, zone: str) -> list[str]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{alertmanager_url}/api/v2/silences") as response,
    ):
        silences = await response.json()
    return [
        s["id"]
        for s in silences
        if s["status"]["state"] == "active" and f"zone {zone}" in s["comment"]
    ]


async def fail_over(source: Zone, target: Zone, alertmanager_url: str) -> dict[str, Any]:
    earlier = set(await active_silences(alertmanager_url, target.name))  # other tests' too
    paused = await call("POST", f"{source.url}/pause", expect=200)
    assert paused["state"] == "PAUSED"
    assert paused["operation"]["status"] == "succeeded"
    accepted = await call("POST", f"{target.url}/activate?zone={source.name}", expect=202)
    assert accepted["operation"]["kind"] == "activate"
    done: dict[str, Any] = await wait_for(
        lambda: operation_done(target), f"{target.name} to activate"
    )
    progress = done["operation"]["progress"]
    assert progress["segmentsDone"] == progress["segmentsTotal"]
    metrics = await prometheus(target)
    assert metrics["az_agent_activation_duration_seconds"] > 0
    assert metrics['az_agent_state{state="ACTIVE"}'] == 1
    assert metrics['az_agent_rehydration_segments{of="done"}'] == progress["segmentsDone"]
    assert metrics['az_agent_rehydration_bytes{of="total"}'] == progress["bytesTotal"]
    for phase in ("fence-source", "scale-up", "restore-postgres", "rehydrate-segments"):
        assert f'az_agent_activation_phase_duration_seconds{{phase="{phase}"}}' in metrics
    created = set(await active_silences(alertmanager_url, target.name)) - earlier
    assert created, "activation silences the zone's alerts"
    resumed = await call("POST", f"{target.url}/resume", expect=200)
    assert created <= set(resumed["silencesLifted"])
    assert not created & set(await active_silences(alertmanager_url, target.name))
    return done


async def assert_nothing_lost(source: Zone, target: Zone) -> None:
    source_segments = await committed(source)
    target_segments = await committed(target)
    assert source_segments
    missing = {n: c for n, c in source_segments.items() if target_segments.get(n) != c}
    assert not missing, f"segments lost or with another CRC: {missing}"
    for db in DATABASES:
        assert await table_rows(target.postgres, db) == await table_rows(source.postgres, db)
    source_ends, _ = await consumption(source)
    _, target_starts = await wait_for(
        lambda: _consuming_everywhere(target, set(source_ends)), "consumption to resume"
    )
    assert target_starts == source_ends, "each partition continues from the source's end offset"


async def _consuming_everywhere(
    zone: Zone, partitions: set[int]
) -> tuple[dict[int, int], dict[int, int]] | None:
    ends, starts = await consumption(zone)
    return (ends, starts) if set(starts) == partitions else None


async def test_planned_failover_and_back(stack: tuple[Zone, Zone], alertmanager: Any) -> None:
    one, two = stack
    await one.start()
    await two.start()
    assert (await status(two))["state"] == "STANDBY"
    await wait_for(lambda: leads(one), "zone 1 to lead")
    for _ in range(3):
        await one.pinot.cluster.commit_consuming(REALTIME_TABLE)
    await wait_for(lambda: fully_backed_up(one), "zone 1 to back up its segments")

    await fail_over(one, two, alertmanager.url)
    await assert_nothing_lost(one, two)
    await wait_for(lambda: in_state(one, "STANDBY"), "zone 1 to see it was handed over")

    # Zone 2 now takes data and backs it up under its own zone; then everything goes back.
    await two.pinot.cluster.commit_consuming(REALTIME_TABLE)
    await wait_for(lambda: fully_backed_up(two), "zone 2 to back up its segments")
    await execute_in(two, "INSERT INTO dashboards (title) VALUES ('made in az2')")
    await fail_over(two, one, alertmanager.url)
    await assert_nothing_lost(two, one)
    await wait_for(lambda: in_state(two, "STANDBY"), "zone 2 to see it was handed over")
    await wait_for(lambda: leads(one), "zone 1 to lead again")


async def execute_in(zone: Zone, sql: str) -> None:
    from tests.e2e.conftest import execute

    await execute(zone.postgres, DATABASES[0], sql)
