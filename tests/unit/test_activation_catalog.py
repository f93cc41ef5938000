"""An activation reads the source's catalog once before the fence and refreshes it once after:
incrementally, unless retention removed the entries after the ones it had read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from az_agent.agent.operations.activate import PHASES, Activation
from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.journal import Operation
from az_agent.agent.operations.requests import ActivateRequest
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import LogWriter, load_catalog, truncate_log, write_checkpoint
from tests.fakeclock import FakeClock
from tests.unit.state.helpers import segment

SOURCE = "az1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileObjectStore]:
    opened = FileObjectStore(tmp_path / "bucket")
    yield opened
    await opened.close()


async def backed_up(writer: LogWriter, names: range) -> None:
    for number in names:
        await writer.append(segment(SOURCE, f"seg{number}"))


async def activation(store: FileObjectStore) -> tuple[Activation, Operation]:
    """As :meth:`Activation.prepare` leaves it: the catalog read, the fence still to come."""
    agent = cast(AgentContext, SimpleNamespace(deps=SimpleNamespace(store=store)))
    op = Operation.start("activate", PHASES, FakeClock().now(), source_zone=SOURCE)
    active = Activation(agent, ActivateRequest(zone=SOURCE), op)
    active.catalog = await load_catalog(store, SOURCE)
    return active, op


async def fenced(store: FileObjectStore, op: Operation) -> None:
    await LogWriter(store, SOURCE, 2, "az2", clock=FakeClock()).write_fence(reason="test")
    op.get_phase("fence-source").status = "done"


def names(active: Any) -> set[str]:
    return {record.name for record in active.catalog.segments()}


async def test_after_the_fence_the_catalog_is_refreshed_once(store: FileObjectStore) -> None:
    writer = LogWriter(store, SOURCE, 1, "az1", clock=FakeClock())
    await writer.write_fence()
    await backed_up(writer, range(3))
    active, op = await activation(store)
    before = active.catalog
    await backed_up(writer, range(3, 5))  # committed before the fence
    await fenced(store, op)
    catalog = await active._load_catalog()
    assert catalog is before  # refreshed in place, not loaded again
    assert names(active) == {f"seg{n}" for n in range(5)}
    later = LogWriter(store, SOURCE, 3, "later", clock=FakeClock())
    await later.write_fence()
    await backed_up(later, range(9, 10))
    assert await active._load_catalog() is catalog  # once: the log is closed after the fence
    assert "seg9" not in names(active)


async def test_entries_removed_by_retention_since_prepare_reload_the_catalog(
    store: FileObjectStore,
) -> None:
    writer = LogWriter(store, SOURCE, 1, "az1", clock=FakeClock())
    await writer.write_fence()
    await backed_up(writer, range(2))
    active, op = await activation(store)
    await backed_up(writer, range(2, 6))
    await write_checkpoint(store, await load_catalog(store, SOURCE))
    assert await truncate_log(store, SOURCE) > 0  # the entries after the catalog's went too
    await fenced(store, op)
    await active._load_catalog()
    assert names(active) == {f"seg{n}" for n in range(6)}
