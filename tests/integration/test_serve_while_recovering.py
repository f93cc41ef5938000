"""The HTTP API answers while the agent is still recovering from the bucket: GETs say so, POSTs
are refused with 503 and Retry-After (nothing written), and once recovery ends all works."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.config import AgentConfig, parse_config
from az_agent.agent.daemon import Agent, AgentDeps
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.wiring import serve
from az_agent.drivers.alerts import open_silence_manager
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.sandbox.postgres import free_port
from az_agent.state import LogWriter, SystemClock
from tests.integration.leftovers import settle
from tests.unit.state.helpers import FaultyStore, file_store, segment

SOURCE, ZONE = "az1", "az2"
READS = ("get", "head", "list")


@dataclass
class Held:
    """An agent serving HTTP whose reads of its own zone wait until ``release`` is set."""

    agent: Agent
    store: FaultyStore
    url: str
    release: asyncio.Event
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        async with self.session.request(method, f"{self.url}{path}") as response:
            return response.status, await response.json(), dict(response.headers)

    async def status_when(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first ``/status`` body for which ``condition`` holds (the last one after 10 s)."""
        for _ in range(200):
            _, body, _ = await self.call("GET", "/status")
            if condition(body):
                break
            await asyncio.sleep(0.05)
        return body

    async def own_zone_keys(self) -> list[str]:
        return [i.key async for i in self.store.inner.list(f"{ZONE}/")]


def _config(root: Path) -> AgentConfig:
    raw = {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(root)}}},
        "az-service": {
            "config": {
                "zone": ZONE,
                "role": "standby",
                "http": {"host": "127.0.0.1", "port": free_port()},
                "pinot": {"controllerUrl": f"http://127.0.0.1:{free_port()}"},
                "postgres": {"databases": []},
            }
        },
    }
    return parse_config(raw, environ={})


async def _answers(url: str, session: aiohttp.ClientSession) -> bool:
    """Whether the server answers at all (any status): it is listening."""
    try:
        async with session.get(f"{url}/healthz"):
            return True
    except aiohttp.ClientConnectionError:
        return False


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[Held]:
    before = asyncio.all_tasks()
    store = await file_store(tmp_path / "bucket")
    source = LogWriter(store.inner, SOURCE, 1, "az1-agent")  # zone az1 backed up, lease gone
    await source.write_fence(reason="az1 leads")
    await source.append(segment(SOURCE, "metrics_0"))
    release = asyncio.Event()

    async def hold(op: str, key: str) -> None:
        if op in READS and key.startswith(f"{ZONE}/"):
            await release.wait()

    store.before = hold
    config = _config(tmp_path / "bucket")
    clock, metrics = SystemClock(), AgentMetrics(ZONE)
    async with contextlib.AsyncExitStack() as stack:
        pinot = await stack.enter_async_context(
            HttpPinotController(config.service.pinot.controller_url)
        )
        silences = open_silence_manager("", matchers=[], created_by="test")
        stack.push_async_callback(silences.close)
        stack.push_async_callback(store.close)
        agent = Agent(
            AgentDeps(
                config=config,
                store=store,
                clock=clock,
                pinot=pinot,
                dumper=None,
                silences=silences,
                segment_backup=SegmentBackupLoop(pinot, config.service.pinot, metrics, clock),
                database_backup=None,
                metrics=metrics,
            )
        )
        http = config.service.http
        url = f"http://{http.host}:{http.port}"
        timeout = aiohttp.ClientTimeout(total=10)  # a held request fails, not hangs
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        task = asyncio.create_task(serve(agent, config))
        try:
            for _ in range(200):
                if await _answers(url, session):
                    break
                await asyncio.sleep(0.05)
            yield Held(agent, store, url, release, session)
        finally:
            release.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await settle(before)


async def test_posts_wait_for_recovery_and_gets_say_so(held: Held) -> None:
    status, body, headers = await held.call("POST", f"/activate?zone={SOURCE}")
    assert status == 503, body
    assert body["error"] == "not-ready"
    assert "recovering" in body["detail"]
    assert int(headers["Retry-After"]) > 0
    for path in ("/pause", "/resume"):
        status, body, headers = await held.call("POST", path)
        assert (status, body["error"]) == (503, "not-ready"), body
        assert "Retry-After" in headers

    status, body, _ = await held.call("GET", "/healthz")
    assert status == 200, body
    status, body, headers = await held.call("GET", "/readyz")
    assert status == 503, body
    assert "recovering" in str(body)
    assert "Retry-After" in headers
    status, body, _ = await held.call("GET", "/status")
    assert status == 200, body
    assert body["state"] == "RECOVERING"
    assert body["allowedRequests"] == []

    # Nothing was started or written: no ACTIVATING without its task, no operation journaled.
    assert held.agent.state.value != "ACTIVATING"
    assert held.agent.operation is None
    assert [k for k in await held.own_zone_keys() if "/operations/" in k] == []
    assert [i.key async for i in held.store.inner.list("primary/")] == []

    held.release.set()
    body = await held.status_when(lambda b: b["state"] != "RECOVERING")
    assert body["state"] == "STANDBY"
    assert body["operation"] is None

    status, body, _ = await held.call("POST", f"/activate?zone={SOURCE}")
    assert status == 202, body
    assert held.agent.state.value in ("ACTIVATING", "FAILED")  # Pinot is not there
    assert body["operation"]["kind"] == "activate"


async def test_recovery_is_retried_while_the_bucket_is_down(held: Held) -> None:
    held.store.down = True  # the read already waiting goes through, the next ones fail
    held.release.set()
    body = await held.status_when(lambda b: bool(b.get("recoveryError")))
    assert body["state"] == "RECOVERING"
    assert "Unavailable" in body["recoveryError"]
    status, body, _ = await held.call("GET", "/readyz")
    assert status == 503
    assert "Unavailable" in body["dependencies"]["recovery"]
    status, body, _ = await held.call("POST", "/resume")
    assert status == 503
    assert "last attempt failed" in body["detail"]

    held.store.down = False
    body = await held.status_when(lambda b: b["state"] != "RECOVERING")
    assert body["state"] == "STANDBY"
    status, body, _ = await held.call("POST", "/resume")
    assert (status, body["state"]) == (409, "STANDBY")  # answered by the state machine now
