"""The orphan sweep: old unreferenced data goes; young, referenced and state objects stay."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from az_agent.state import Catalog, LogWriter, load_catalog, sweep_orphans, write_checkpoint
from az_agent.state.keys import checkpoint_key, dump_key, lease_key, log_key
from tests.fakeclock import FakeClock, Timeline
from tests.unit.state.helpers import FaultyStore, file_store, segment

ZONE = "az1"
GRACE = timedelta(hours=1)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FaultyStore]:
    opened = await file_store(tmp_path / "bucket")
    yield opened
    await opened.close()


def age(root: Path, key: str, hours: float) -> None:
    """Make the object ``key`` look ``hours`` old to a clock reading the real time now."""
    stamp = time.time() - hours * 3600
    os.utime(root / key, (stamp, stamp))


def now_clock() -> FakeClock:
    real_now = datetime.now(UTC)
    return FakeClock(Timeline(start=real_now))


async def test_sweep_removes_only_old_unreferenced_data(tmp_path: Path, store: FaultyStore) -> None:
    root = tmp_path / "bucket"
    writer = LogWriter(store, ZONE, 1, "a", clock=FakeClock())
    await writer.write_fence()
    kept = segment(ZONE, "committed")
    await store.put(kept.key, b"tarball")
    await writer.append(kept)
    orphan = segment(ZONE, "never-committed").key
    young = segment(ZONE, "uploading-now").key
    stray_dump = dump_key(ZONE, "configdb", "20300101T000000Z")
    other_zone = segment("az2", "not-ours").key
    for key in (orphan, young, stray_dump, other_zone, "az1/pinot/tables/old.json"):
        await store.put(key, b"data")
    catalog = await load_catalog(store, ZONE)
    await write_checkpoint(store, catalog)
    await store.put(lease_key(ZONE), b"{}")
    for key in (kept.key, orphan, stray_dump, other_zone, "az1/pinot/tables/old.json"):
        age(root, key, 2)
    for key in (lease_key(ZONE), log_key(ZONE, 1), log_key(ZONE, 2), checkpoint_key(ZONE, 2)):
        age(root, key, 100)
    age(root, young, 0.5)

    removed = await sweep_orphans(store, ZONE, catalog, GRACE, now_clock())

    assert sorted(i.key for i in removed) == sorted(
        [orphan, stray_dump, "az1/pinot/tables/old.json"]
    )
    remaining = {info.key async for info in store.list("")}
    assert {kept.key, young, other_zone, lease_key(ZONE), log_key(ZONE, 2)} <= remaining
    assert checkpoint_key(ZONE, 2) in remaining
    assert not {orphan, stray_dump} & remaining


async def test_entry_committed_after_the_catalog_was_loaded_protects_its_object(
    tmp_path: Path, store: FaultyStore
) -> None:
    writer = LogWriter(store, ZONE, 1, "a", clock=FakeClock())
    await writer.write_fence()
    stale = await load_catalog(store, ZONE)
    late = segment(ZONE, "slow-writer")
    await store.put(late.key, b"tarball")
    age(tmp_path / "bucket", late.key, 3)  # an upload long ago, committed only now
    await writer.append(late)
    assert await sweep_orphans(store, ZONE, stale, GRACE, now_clock()) == []
    assert stale.segment(late.table, late.segment) is not None  # refreshed in place
    assert (await store.head(late.key)).size == len(b"tarball")


async def test_sweep_refuses_another_zones_catalog(store: FaultyStore) -> None:
    with pytest.raises(ValueError, match="cannot sweep"):
        await sweep_orphans(store, ZONE, Catalog("az2"), GRACE, now_clock())
