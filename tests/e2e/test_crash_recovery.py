"""An agent killed in the middle of rehydration resumes the activation on its own after a restart.

Zone 1 backs up a few dozen segments of a few hundred KB and is paused cleanly. Zone 2's agent,
a process with two rehydration workers and batches of two, is SIGKILLed while it moves them, then
started again with the same configuration: it must pick the activation up from the operation
record in the bucket and complete it with no gap (every backed-up segment, same CRC) and no
duplicate (each segment moved at most twice, and no more re-uploads than workers).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from az_agent.agent.operations.journal import Operation, current_key
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.pinot.models import TableRef, TableType
from az_agent.emulators.pinot import upload
from az_agent.emulators.pinot.cluster import Cluster
from az_agent.emulators.pinot.state import TableRecord
from az_agent.emulators.pinot.zkmeta import SegmentFacts
from az_agent.state import SegmentRecord, load_catalog
from tests.e2e.conftest import (
    DATABASES,
    REALTIME_TABLE,
    TABLE,
    AgentProcessFactory,
    Zone,
    activation_done,
    call,
    open_bucket,
    status_of,
    table_rows,
    wait_for,
)

REALTIME = TableRef(TABLE, TableType.REALTIME)
COMMITS = 16
"""Each commits both partitions: 32 segments, plus the two the pause commits."""
CONCURRENCY = 2
UPLOAD_DELAY_SECONDS = 0.15
"""Zone 2's Pinot holds each upload this long, so the kill lands while segments move."""
UNLIMITED = 1_000_000


@pytest.fixture
def segment_size() -> int:
    return 300 << 10


Uploads = Counter[tuple[str, str]]


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> Uploads:
    """Uploads each emulator completed, per (emulator URL, segment), counted where the
    emulator stores them (an upload cut off by a kill never gets there). The emulator keeps no
    such counter and its API cannot tell uploads apart by segment, hence the patch."""
    counts: Uploads = Counter()
    store = upload._store

    async def counted(
        cluster: Cluster,
        request: Any,
        table: TableRecord,
        facts: SegmentFacts,
        segment: str,
        scratch: Path,
    ) -> None:
        await store(cluster, request, table, facts, segment, scratch)
        counts[(cluster.url, segment)] += 1

    monkeypatch.setattr(upload, "_store", counted)
    return counts


async def pinot_segments(pinot_url: str) -> list[tuple[str, str, bool]]:
    """(name, CRC, committed) of every segment of the realtime table, as Pinot lists them."""
    controller = HttpPinotController(pinot_url)
    try:
        return [
            (s.name, str(s.crc), s.is_backup_ready) for s in await controller.segments(REALTIME)
        ]
    finally:
        await controller.close()


async def back_up_and_pause(one: Zone) -> list[SegmentRecord]:
    """Zone 1 commits the segments, then ``/pause`` backs up every one and hands over."""
    await one.start()
    await wait_for(lambda: _leads(one.url), "zone 1 to lead", within=20)
    for _ in range(COMMITS):
        await one.pinot.cluster.commit_consuming(REALTIME_TABLE)
    paused = await call("POST", f"{one.url}/pause", expect=200)
    assert paused["state"] == "PAUSED", paused
    async with open_bucket(one.config) as store:
        catalog = await load_catalog(store, one.name)
    records = catalog.segments()
    committed = {(n, c) for n, c, done in await pinot_segments(one.pinot.url) if done}
    assert {(r.name, r.crc) for r in records} == committed
    assert len(records) >= 2 * COMMITS
    return records


async def _leads(url: str) -> bool:
    """The agent holds its lease and its leader session runs (backs up)."""
    body = await status_of(url)
    return bool(body["leader"] and body["leading"])


async def slow_down_uploads(pinot_url: str) -> None:
    """Every upload waits a little before Pinot reads it, and is counted as a request."""
    fault = {
        "path": "^/v2/segments$",
        "method": "POST",
        "status": 0,
        "delay": UPLOAD_DELAY_SECONDS,
        "times": UNLIMITED,
    }
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{pinot_url}/_emulator/faults", json=fault) as response,
    ):
        assert response.status == 200, await response.text()


async def upload_requests(pinot_url: str) -> int:
    """Upload requests Pinot received, finished or not (the fault counts them down)."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{pinot_url}/_emulator/faults") as response,
    ):
        faults = await response.json()
    assert len(faults) == 1, faults
    return UNLIMITED - int(faults[0]["times"])


async def mid_rehydration(url: str) -> dict[str, Any] | None:
    """The operation once a third of the segments moved and the rest have not."""
    operation = (await status_of(url))["operation"]
    if operation is None or operation["phase"] != "rehydrate-segments":
        return None
    progress = operation["progress"]
    done, total = progress["segmentsDone"], progress["segmentsTotal"]
    return operation if 0 < max(1, total // 3) <= done < total else None


async def saved_operation(zone: Zone) -> Operation:
    """The zone's current operation as the bucket holds it."""
    async with open_bucket(zone.config) as store:
        data, _ = await store.get(current_key(zone.name))
    return Operation.model_validate_json(data)


async def test_crash_in_the_middle_of_rehydration(
    stack: tuple[Zone, Zone], agent_processes: AgentProcessFactory, uploads: Uploads
) -> None:
    one, two = stack
    records = await back_up_and_pause(one)
    await slow_down_uploads(two.pinot.url)
    agent = agent_processes(two, rehydration={"concurrency": CONCURRENCY, "batchSize": CONCURRENCY})
    await agent.start()
    accepted = await call("POST", f"{agent.url}/activate?zone={one.name}", expect=202)
    op_id = accepted["operation"]["id"]

    seen = await wait_for(
        lambda: mid_rehydration(agent.url), "rehydration under way", within=30, interval=0.05
    )
    await agent.kill()
    assert 0 < sum(uploads.values()) < len(records), (uploads, seen)
    saved = await saved_operation(two)
    assert (saved.id, saved.status, saved.phase) == (op_id, "running", "rehydrate-segments")

    await agent.start()
    resumed = await status_of(agent.url)
    assert resumed["state"] == "ACTIVATING", resumed
    assert resumed["operation"]["id"] == op_id, resumed
    done = await wait_for(lambda: activation_done(agent.url), "the activation to end", within=30)
    assert done["operation"]["id"] == op_id

    await assert_no_gap(one, two, records)
    await assert_no_duplicate(two, records, uploads)
    progress = done["operation"]["progress"]
    assert (progress["segmentsDone"], progress["segmentsTotal"]) == (len(records),) * 2, (
        f"the operation's progress forgot the segments moved before the restart: {progress}"
    )
    size = sum(r.size for r in records)
    assert (progress["bytesDone"], progress["bytesTotal"]) == (size, size), progress
    metrics = await scrape(agent.url)  # the restarted process's, for the resumed activation
    for kind, total in (("segments", len(records)), ("bytes", size)):
        assert metrics[f'az_agent_rehydration_{kind}{{of="done"}}'] == total, metrics
        assert metrics[f'az_agent_rehydration_{kind}{{of="total"}}'] == total, metrics
    assert metrics["az_agent_rehydration_bytes_per_second"] == 0  # nothing moves any more
    assert metrics["az_agent_activation_duration_seconds"] > 0


async def scrape(url: str) -> dict[str, float]:
    """An agent's /metrics as {series: value}."""
    async with aiohttp.ClientSession() as client, client.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


async def assert_no_gap(one: Zone, two: Zone, records: list[SegmentRecord]) -> None:
    """Every backed-up segment is in zone 2's Pinot with its CRC, once, and nothing else."""
    listed = await pinot_segments(two.pinot.url)
    names = [name for name, _, _ in listed]
    assert len(names) == len(set(names)), "a segment is listed twice"
    present = {name: crc for name, crc, committed in listed if committed}
    assert present == {r.name: r.crc for r in records}, "exactly zone 1's backed-up segments"
    for db in DATABASES:
        assert await table_rows(two.postgres, db) == await table_rows(one.postgres, db), db


async def assert_no_duplicate(two: Zone, records: list[SegmentRecord], uploads: Uploads) -> None:
    """Only the segments in flight at the kill (one per worker) may have been moved twice."""
    moved = {segment: count for (url, segment), count in uploads.items() if url == two.pinot.url}
    assert set(moved) == {r.name for r in records}
    assert max(moved.values()) <= 2, {s: c for s, c in moved.items() if c > 1}
    assert sum(moved.values()) - len(moved) <= CONCURRENCY, moved
    requests = await upload_requests(two.pinot.url)
    assert requests - len(records) <= CONCURRENCY, f"{requests} uploads for {len(records)}"
