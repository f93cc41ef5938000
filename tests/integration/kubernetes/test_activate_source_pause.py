"""``/activate?namespace=``: the real agent pauses the source through the (fake) API server's
service proxy before it accepts the activation, with the source's token, service and port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from az_agent.agent.config import AgentConfig, parse_config
from az_agent.agent.daemon import Agent
from az_agent.agent.wiring import build_agent, serve
from az_agent.drivers.errors import NotFound
from az_agent.drivers.kubernetes.service_proxy import AGENT_TOKEN_HEADER, KubernetesServiceProxy
from az_agent.drivers.storage.base import ObjectStore
from az_agent.sandbox.postgres import free_port
from az_agent.state import LeaseKeeper, LeaseSettings, LeaseState, LogWriter, new_holder_id
from tests.integration.kubernetes.fake_apiserver import FakeApiServer
from tests.integration.leftovers import settle
from tests.unit.state.helpers import segment

SOURCE, TARGET = "az1", "az2"
SOURCE_NS, SERVICE, PORT = "kfuse-az1", "kfuse-az", 9090
SOURCE_TOKEN, OWN_TOKEN = "source-api-token", "own-api-token"


@dataclass
class SourceAgent:
    """Zone az1's agent as the proxy reaches it: checks the relayed token like the real one,
    and answers ``/pause`` as scripted; a 200 pauses its lease, as a real pause ends."""

    keeper: LeaseKeeper
    status: int = 200
    body: dict[str, Any] = field(default_factory=lambda: {"state": "PAUSED"})
    seen: list[tuple[str, dict[str, str], dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.query), dict(request.headers)))
        if request.headers.get(AGENT_TOKEN_HEADER) != SOURCE_TOKEN:
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.status == 200:
            await self.keeper.release(LeaseState.PAUSED)
        return web.json_response(self.body, status=self.status)


@dataclass
class Stack:
    apiserver: FakeApiServer
    source: SourceAgent
    agent: Agent
    store: ObjectStore
    url: str

    async def activate(self, query: str) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {OWN_TOKEN}"}
        async with (
            aiohttp.ClientSession(headers=headers) as client,
            client.post(f"{self.url}/activate?zone={SOURCE}&namespace={SOURCE_NS}&{query}") as r,
        ):
            return r.status, await r.json()

    async def lease_version(self) -> str:
        return (await self.store.head(f"{SOURCE}/lease.json")).version

    async def journaled(self) -> list[str]:
        return [i.key async for i in self.store.list(f"{TARGET}/operations/")]


def _config(tmp_path: Path) -> AgentConfig:
    secrets = tmp_path / "secrets"
    (secrets / "source-agent").mkdir(parents=True)
    (secrets / "source-agent" / "token").write_text(SOURCE_TOKEN)
    (tmp_path / "own-token").write_text(OWN_TOKEN)
    raw = {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(tmp_path / "bucket")}}},
        "az-service": {
            "config": {
                "zone": TARGET,
                "role": "standby",
                "secretsDir": str(secrets),
                "http": {
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "tokenFile": str(tmp_path / "own-token"),
                },
                "pinot": {"controllerUrl": f"http://127.0.0.1:{free_port()}"},
                "postgres": {"databases": []},
                "kubernetes": {
                    "sourceService": SERVICE,
                    "sourcePort": PORT,
                    "sourceTokenSecret": "source-agent",
                },
            }
        },
    }
    return parse_config(raw, environ={})


async def _live_source(store: ObjectStore) -> LeaseKeeper:
    """Zone az1 as a running agent leaves it: a live lease, a log with one segment."""
    settings = LeaseSettings(ttl_seconds=60, renew_deadline_seconds=50, retry_period_seconds=2)
    keeper = LeaseKeeper(store, SOURCE, new_holder_id("az1-agent"), settings)
    assert await keeper.tick()
    assert keeper.epoch is not None
    writer = LogWriter(store, SOURCE, keeper.epoch, keeper.holder_id)
    await writer.write_fence(reason="az1 leads")
    await writer.append(segment(SOURCE, "metrics_0"))
    return keeper


@pytest.fixture
async def stack(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy, tmp_path: Path
) -> AsyncIterator[Stack]:
    config = _config(tmp_path)
    before = asyncio.all_tasks()
    async with contextlib.AsyncExitStack() as exits:
        agent = await exits.enter_async_context(build_agent(config))
        # The API server's own credentials come from the pod's service account in a cluster;
        # here the fixture's proxy carries the fake API server's token.
        agent.deps.service_proxy = service_proxy
        source = SourceAgent(await _live_source(agent.deps.store))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", source.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        exits.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        apiserver.add_service(SOURCE_NS, SERVICE, PORT, f"http://127.0.0.1:{port}")
        ready = asyncio.Event()
        task = asyncio.create_task(serve(agent, config, ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            http = config.service.http
            yield Stack(
                apiserver, source, agent, agent.deps.store, f"http://{http.host}:{http.port}"
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await settle(before)


async def test_a_refused_pause_stops_the_activation_with_the_sources_answer(
    stack: Stack,
) -> None:
    stack.source.status = 409
    stack.source.body = {"error": "conflict", "detail": "activating", "state": "ACTIVATING"}
    lease = await stack.lease_version()

    status, body = await stack.activate("")

    assert status == 409, body
    assert body["error"] == "conflict"
    assert body["state"] == "STANDBY"
    assert body["source"] == {
        "namespace": SOURCE_NS,
        "status": 409,
        "body": {"error": "conflict", "detail": "activating", "state": "ACTIVATING"},
    }
    assert "forcePause" in body["detail"]
    # Nothing written: no operation, the source's lease as it was, the agent still a standby.
    assert await stack.journaled() == []
    assert await stack.lease_version() == lease
    assert stack.agent.state.value == "STANDBY"
    assert stack.agent.operation is None
    # Through the configured service and port, with the source's token (not this agent's).
    [sent] = [r for r in stack.apiserver.requests if "/proxy/" in r.path]
    assert sent.path == f"/api/v1/namespaces/{SOURCE_NS}/services/{SERVICE}:{PORT}/proxy/pause"
    assert sent.headers["Authorization"] == f"Bearer {stack.apiserver.token}"
    [(path, _, headers)] = stack.source.seen
    assert path == "/pause"
    assert headers[AGENT_TOKEN_HEADER] == SOURCE_TOKEN
    assert "Authorization" not in headers


async def test_an_unreachable_source_stops_it_and_force_pause_does_not_imply_force(
    stack: Stack,
) -> None:
    stack.apiserver.add_service(SOURCE_NS, SERVICE, PORT, None)  # no ready endpoint

    status, body = await stack.activate("")
    assert status == 409, body
    assert body["source"]["namespace"] == SOURCE_NS
    assert "no endpoints available" in body["source"]["error"]

    # forcePause goes on without the pause, but the source's lease is still live: force decides.
    status, body = await stack.activate("forcePause=true")
    assert status == 409, body
    assert "live" in body["detail"]
    assert await stack.journaled() == []

    status, body = await stack.activate("forcePause=true&force=true")
    assert status == 202, body
    phase = next(p for p in body["operation"]["phases"] if p["name"] == "pause-source")
    assert phase["status"] == "done"
    assert "forcePause" in phase["detail"]


async def test_a_paused_source_is_taken_over_without_force(stack: Stack) -> None:
    status, body = await stack.activate("")

    assert status == 202, body
    phase = next(p for p in body["operation"]["phases"] if p["name"] == "pause-source")
    assert "paused" in phase["detail"]
    [(path, query, headers)] = stack.source.seen
    assert (path, query, headers[AGENT_TOKEN_HEADER]) == ("/pause", {"wait": "600"}, SOURCE_TOKEN)
    with pytest.raises(NotFound):
        await stack.store.head(f"{TARGET}/lease.json")  # not before the take-over phase
