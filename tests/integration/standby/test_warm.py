"""Warm standby end to end, in one process: zone az1 backs up its Pinot (an emulator) to a file
bucket; zone az2 (``standby.mode: warm``) follows az1's log into its own emulator. Its Pinot gets
the tables and segments (same CRCs) with consumption paused, its lag reaches 0, new and deleted
segments follow, and an activation uploads only what arrived since the last follow step (every
upload to az2's Pinot is counted) and resumes consumption.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.config import AgentConfig
from az_agent.agent.daemon import Agent, AgentDeps
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.operations.requests import ActivateRequest, PauseRequest
from az_agent.agent.operations.states import AgentState
from az_agent.drivers.alerts import open_silence_manager
from az_agent.drivers.pinot.base import UploadBody
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.pinot.models import TableRef, TableType, UploadResult
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.emulators.pinot import EmulatorOptions, PinotEmulator, SeedTable
from az_agent.state import Catalog, SystemClock, load_catalog, truncate_log, write_checkpoint
from tests.e2e.conftest import wait_for
from tests.integration.agent_operations.conftest import until
from tests.integration.leftovers import settle
from tests.serving import serving
from tests.zoneconfig import file_zone_config

TABLE = TableRef("events", TableType.REALTIME)
QUIET = TableRef("quiet", TableType.REALTIME)


class CountingPinot(HttpPinotController):
    """az2's controller, counting every segment upload by name."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.uploads: Counter[str] = Counter()

    async def upload_segment(
        self,
        table: TableRef,
        body: UploadBody,
        *,
        segment_name: str,
        allow_refresh: bool = True,
        if_match_crc: int | None = None,
    ) -> UploadResult:
        result = await super().upload_segment(
            table, body, segment_name=segment_name, allow_refresh=allow_refresh,
            if_match_crc=if_match_crc,
        )  # fmt: skip
        self.uploads[segment_name] += 1
        return result


config = file_zone_config


@contextlib.asynccontextmanager
async def running(
    store: FileObjectStore, cfg: AgentConfig, pinot: HttpPinotController
) -> AsyncIterator[Agent]:
    clock, metrics = SystemClock(), AgentMetrics(cfg.zone)
    before = set(asyncio.all_tasks())
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(pinot)
        silences = open_silence_manager("", matchers=[], created_by="az-agent-test")
        stack.push_async_callback(silences.close)
        backup = SegmentBackupLoop(pinot, cfg.service.pinot, metrics, clock)
        agent = Agent(AgentDeps(cfg, store, clock, pinot, None, silences, backup, None, metrics))
        try:
            async with serving(agent):
                yield agent
        finally:
            await settle(before)


async def local_crcs(pinot: HttpPinotController) -> dict[str, str]:
    """Segment name -> CRC of every table (segment names carry their table's)."""
    crcs: dict[str, str] = {}
    for table in await pinot.list_tables():
        crcs.update({s.name: str(s.crc) for s in await pinot.segments(table)})
    return crcs


def backed_up(catalog: Catalog) -> dict[str, str]:
    return {r.name: r.crc for r in catalog.segments()}


Zones = tuple[PinotEmulator, PinotEmulator, Path]


@contextlib.asynccontextmanager
async def emulators(tmp_path: Path, *, az2_has_the_table: bool) -> AsyncIterator[Zones]:
    options = EmulatorOptions(seed=11, segment_size=16 << 10)
    seeds = [SeedTable(TABLE.raw, "REALTIME", 2)]
    quiet = [SeedTable(QUIET.raw, "REALTIME", 1)]  # no segment committed until az1's pause
    async with (
        PinotEmulator(tmp_path / "pinot-az1", options=options, seed_tables=seeds + quiet) as one,
        PinotEmulator(
            tmp_path / "pinot-az2", options=options, seed_tables=seeds if az2_has_the_table else ()
        ) as two,
    ):
        yield one, two, tmp_path / "bucket"


@pytest.fixture
async def zones(tmp_path: Path) -> AsyncIterator[Zones]:
    """az1's Pinot with a REALTIME table, az2's empty."""
    async with emulators(tmp_path, az2_has_the_table=False) as made:
        yield made


@pytest.fixture
async def seeded_zones(tmp_path: Path) -> AsyncIterator[Zones]:
    """Both zones' Pinot with the table (created there before any following)."""
    async with emulators(tmp_path, az2_has_the_table=True) as made:
        yield made


async def test_a_warm_standby_follows_and_its_activation_moves_only_the_delta(
    zones: Zones,
) -> None:
    one, two, root = zones
    store = FileObjectStore(root)
    await store.check()
    counting = CountingPinot(two.url)
    warm = {"role": "standby", "standby": {"mode": "warm", "followIntervalSeconds": 3600}}
    async with (
        HttpPinotController(one.url) as az1_pinot,
        running(store, config(root, "az1", one.url, role="active"), az1_pinot) as az1,
        running(store, config(root, "az2", two.url, **warm), counting) as az2,
    ):
        for _ in range(4):
            await one.cluster.produce_segment(TABLE.name_with_type)

        async def az1_backed_up(count: int) -> Catalog:
            catalog = Catalog("az1")

            async def enough() -> bool:
                nonlocal catalog
                catalog = await load_catalog(store, "az1")
                return len(backed_up(catalog)) >= count

            await until_async(enough, f"az1 to back up {count} segments")
            return catalog

        async def follow() -> dict[str, Any]:
            """Wake az2's follower and wait for a step that ends caught up with az1's log."""
            assert az2.follower is not None
            tail = (await load_catalog(store, "az1")).last_seq
            az2.follower.wake()
            await until(
                lambda: (
                    az2.status()["standby"]["followedSeq"] >= tail
                    and az2.status()["standby"]["lastError"] is None
                ),
                "az2 to follow az1's log",
            )
            standby: dict[str, Any] = az2.status()["standby"]
            return standby

        catalog = await az1_backed_up(4)
        standby = await follow()
        assert standby["mode"] == "warm", standby
        assert standby["following"] == "az1", standby
        assert (standby["behindEntries"], standby["behindSeconds"]) == (0, 0.0), standby
        assert await local_crcs(counting) == backed_up(catalog)
        status = await counting.pause_status(TABLE.name_with_type)
        assert status.paused, "a followed REALTIME table must not consume on the standby"
        assert catalog.table_configs().get(QUIET.name_with_type) is not None
        tables = await counting.list_tables()
        assert QUIET not in tables, "created now, a table without segments would consume here"
        metrics = az2.metrics_text()[0].decode()
        assert "az_agent_standby_behind_entries 0.0" in metrics
        assert "az_agent_standby_behind_seconds 0.0" in metrics

        # New segments on az1 follow; a segment az1's Pinot deletes is deleted here too.
        first = sorted(backed_up(catalog))[0]
        await az1_pinot.delete_segment(TABLE, first)
        for _ in range(3):
            await one.cluster.produce_segment(TABLE.name_with_type)

        async def deletion_logged() -> bool:
            return (await load_catalog(store, "az1")).segment(TABLE.name_with_type, first) is None

        await until_async(deletion_logged, "az1 to log the deletion")
        catalog = await az1_backed_up(6)
        await follow()
        local = await local_crcs(counting)
        assert first not in local
        assert local == backed_up(catalog)
        assert all(n == 1 for n in counting.uploads.values()), counting.uploads
        followed = set(local)

        # Segments committed after the last follow step (and those az1's pause flushes) are
        # the delta the activation moves; nothing followed is uploaded again.
        for _ in range(2):
            await one.cluster.produce_segment(TABLE.name_with_type)
        await az1_backed_up(8)
        status_code, _ = await az1.pause(PauseRequest())
        assert status_code == 200
        final = backed_up(await load_catalog(store, "az1"))
        delta = set(final) - followed
        assert len(delta) >= 2
        counting.uploads.clear()
        await az2.activate(ActivateRequest(zone="az1"))
        await until(lambda: az2.state is AgentState.ACTIVE, "az2's activation", within=60)
        assert set(counting.uploads) == delta, (counting.uploads, delta)
        assert all(n == 1 for n in counting.uploads.values()), counting.uploads
        operation = az2.status()["operation"]
        phases = {p["name"]: p for p in operation["phases"]}
        detail = phases["rehydrate-segments"]["detail"]
        assert detail == f"{len(delta)} segments moved, {len(followed)} already present", detail
        local = await local_crcs(counting)
        assert {n: c for n, c in local.items() if n in final} == final
        for table in (TABLE, QUIET):
            status = await counting.pause_status(table.name_with_type)
            assert not status.paused, f"{table}: the activation resumes what the follower paused"
        assert az2.status()["standby"]["following"] is None
    await store.close()


async def until_async(predicate: Any, what: str, within: float = 30.0) -> None:
    await wait_for(predicate, what, within, interval=0.1)


async def test_an_activation_stops_the_follow_step_in_flight(
    zones: Zones,
) -> None:
    """Activated while a follow step is still uploading, the follower's step is cancelled and
    awaited before any phase runs: no segment reaches Pinot twice, none is left out."""
    one, two, root = zones
    store = FileObjectStore(root)
    await store.check()
    counting = CountingPinot(two.url)
    warm = {
        "role": "standby",
        "standby": {"mode": "warm", "followIntervalSeconds": 3600},
        "rehydration": {"concurrency": 2, "batchSize": 50},
    }
    for _ in range(12):
        await one.cluster.produce_segment(TABLE.name_with_type)
    async with (
        HttpPinotController(one.url) as az1_pinot,
        running(store, config(root, "az1", one.url, role="active"), az1_pinot) as az1,
    ):

        async def all_backed_up() -> bool:
            return len(backed_up(await load_catalog(store, "az1"))) >= 12

        await until_async(all_backed_up, "az1 to back up 12 segments")
        status_code, _ = await az1.pause(PauseRequest())
        assert status_code == 200
    expected = backed_up(await load_catalog(store, "az1"))
    async with aiohttp.ClientSession() as http:  # every upload to az2's Pinot takes 0.3 s
        fault = {"path": "segments", "method": "POST", "status": 0, "times": 1000, "delay": 0.3}
        async with http.post(f"{two.url}/_emulator/faults", json=fault) as response:
            assert response.status == 200
    async with running(store, config(root, "az2", two.url, **warm), counting) as az2:
        assert az2.follower is not None
        await until(lambda: az2.follower is not None and az2.follower.following == "az1", "a step")
        await until(lambda: sum(counting.uploads.values()) >= 2, "the follower's first uploads")
        await az2.activate(ActivateRequest(zone="az1"))
        await until(lambda: az2.state is AgentState.ACTIVE, "az2's activation", within=60)
        assert az2.follower.followed_seq == 0, "the step in flight was cancelled, not finished"
        assert set(counting.uploads) == set(expected)
        assert all(n == 1 for n in counting.uploads.values()), counting.uploads
        committed = {n: c for n, c in (await local_crcs(counting)).items() if c != "None"}
        assert committed == expected  # beside them, the consuming segments of the resumed table
    await store.close()


async def test_lag_while_steps_fail_and_deletions_in_a_table_that_was_already_there(
    seeded_zones: Zones,
) -> None:
    """A step that fails leaves the lag growing (``/status`` and metrics) with the error, and
    the next one catches up; a segment az1 deleted goes from a table az2 had before following
    (one no restore created, so only the follower's own deletion removes it)."""
    one, two, root = seeded_zones
    store = FileObjectStore(root)
    await store.check()
    warm = {"role": "standby", "standby": {"mode": "warm", "followIntervalSeconds": 3600}}
    async with (
        HttpPinotController(one.url) as az1_pinot,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(3):
            await one.cluster.produce_segment(TABLE.name_with_type)
        async with (
            running(store, config(root, "az1", one.url, role="active"), az1_pinot) as az1,
            running(store, config(root, "az2", two.url, **warm), CountingPinot(two.url)) as az2,
        ):
            follower = az2.follower
            assert follower is not None

            async def step() -> dict[str, Any]:
                """One follow step that starts now (after the one in flight, if any)."""
                assert follower is not None
                await until(lambda: not follower.stepping, "the step in flight to end")
                before = follower.last_step
                follower.wake()
                await until(lambda: follower.last_step != before, "a follow step")
                standby: dict[str, Any] = az2.status()["standby"]
                return standby

            async def backed_up_at_least(count: int) -> bool:
                return len(backed_up(await load_catalog(store, "az1"))) >= count

            await until_async(lambda: backed_up_at_least(3), "az1 to back up 3 segments")
            await until(lambda: follower.following == "az1", "az2 to know the primary")
            assert (await step())["lastError"] is None
            first = sorted(backed_up(await load_catalog(store, "az1")))[0]
            assert first in await local_crcs(az2.deps.pinot)  # type: ignore[arg-type]

            fault = {"path": "zkmetadata", "method": "GET", "status": 503, "times": 1000}
            async with http.post(f"{two.url}/_emulator/faults", json=fault) as response:
                assert response.status == 200
            for _ in range(2):
                await one.cluster.produce_segment(TABLE.name_with_type)
            await until_async(lambda: backed_up_at_least(5), "az1 to back up 5 segments")
            failed = await step()
            assert failed["lastError"] is not None
            assert failed["behindEntries"] >= 2, failed
            assert failed["behindSeconds"] > 0, failed
            await asyncio.sleep(0.5)
            later = az2.status()["standby"]
            assert later["behindSeconds"] >= failed["behindSeconds"] + 0.4, (failed, later)
            metrics = az2.metrics_text()[0].decode()
            assert f"az_agent_standby_behind_entries {float(failed['behindEntries'])}" in metrics

            async with http.delete(f"{two.url}/_emulator/faults") as response:
                assert response.status == 200
            await az1_pinot.delete_segment(TABLE, first)

            async def deletion_logged() -> bool:
                catalog = await load_catalog(store, "az1")
                return catalog.segment(TABLE.name_with_type, first) is None

            await until_async(deletion_logged, "az1 to log the deletion")
            caught_up = await step()
            assert caught_up["lastError"] is None, caught_up
            assert (caught_up["behindEntries"], caught_up["behindSeconds"]) == (0, 0.0)
            status = await az2.deps.pinot.pause_status(TABLE.name_with_type)
            assert status.paused
            local = await local_crcs(az2.deps.pinot)  # type: ignore[arg-type]
            assert first not in local
            expected = backed_up(await load_catalog(store, "az1"))
            assert {n: c for n, c in local.items() if n in expected} == expected
            assert az1.state is AgentState.ACTIVE
    await store.close()


async def test_the_follower_reloads_when_retention_removed_the_entries_after_its_own(
    zones: Zones,
) -> None:
    """Stopped (here: not woken) while the primary's retention checkpointed and truncated its
    log past the follower's last entry, the follower reloads the catalog from the checkpoint
    instead of reading nothing forever."""
    one, two, root = zones
    store = FileObjectStore(root)
    await store.check()
    counting = CountingPinot(two.url)
    warm = {"role": "standby", "standby": {"mode": "warm", "followIntervalSeconds": 3600}}
    async with (
        HttpPinotController(one.url) as az1_pinot,
        running(store, config(root, "az1", one.url, role="active"), az1_pinot),
        running(store, config(root, "az2", two.url, **warm), counting) as az2,
    ):
        follower = az2.follower
        assert follower is not None

        async def backed_up_at_least(count: int) -> bool:
            return len(backed_up(await load_catalog(store, "az1"))) >= count

        async def step() -> None:
            assert follower is not None
            await until(lambda: not follower.stepping, "the step in flight to end")
            before = follower.last_step
            follower.wake()
            await until(lambda: follower.last_step != before, "a follow step")
            assert follower.last_error is None, follower.last_error

        await one.cluster.produce_segment(TABLE.name_with_type)
        await until_async(lambda: backed_up_at_least(1), "az1 to back up a segment")
        await until(lambda: follower.following == "az1", "az2 to know the primary")
        await step()
        followed = follower.followed_seq
        for _ in range(3):
            await one.cluster.produce_segment(TABLE.name_with_type)
        await until_async(lambda: backed_up_at_least(4), "az1 to back up 4 segments")
        catalog = await load_catalog(store, "az1")
        await write_checkpoint(store, catalog)
        assert await truncate_log(store, "az1") >= followed  # the follower's entry went too
        await step()
        assert follower.followed_seq >= catalog.last_seq
        local = await local_crcs(counting)
        assert {n: c for n, c in local.items() if c != "None"} == backed_up(catalog)
    await store.close()
