"""A real Alertmanager per session, plus the odd servers the error tests need."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from az_agent.drivers.alerts.alertmanager import AlertmanagerSilences
from az_agent.drivers.alerts.base import Matcher
from tests.servers.alertmanager import AlertmanagerServer

CREATOR = "az-agent-test"


@pytest.fixture(scope="session")
def alertmanager() -> Iterator[AlertmanagerServer]:
    server = AlertmanagerServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def alertmanager_with_basic_auth() -> Iterator[AlertmanagerServer]:
    server = AlertmanagerServer(basic_auth=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def matchers() -> list[Matcher]:
    """A label unique to the test, so silences of different tests never overlap."""
    return [
        Matcher("az_test", uuid.uuid4().hex),
        Matcher("severity", "info|debug", is_regex=True, is_equal=False),
    ]


@pytest.fixture
async def silences(
    alertmanager: AlertmanagerServer, matchers: list[Matcher]
) -> AsyncIterator[AlertmanagerSilences]:
    async with AlertmanagerSilences(
        alertmanager.url, matchers=matchers, created_by=CREATOR
    ) as manager:
        yield manager


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SilentServer:
    """Accepts connections and never answers: a hung Alertmanager."""

    url: str = ""
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await reader.read()
        finally:
            writer.close()


@pytest.fixture
async def silent_server() -> AsyncIterator[SilentServer]:
    silent = SilentServer()
    server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    silent.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield silent
    finally:
        server.close()
        for task in silent.handlers:
            task.cancel()
        await asyncio.gather(*silent.handlers, return_exceptions=True)
        await server.wait_closed()


@dataclass
class BearerProxy:
    """An auth proxy in front of Alertmanager that wants ``Authorization: Bearer <token>``."""

    upstream: str
    token: str
    url: str = ""
    seen: list[str] = field(default_factory=list)
    _client: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        self.seen.append(header)
        if header != f"Bearer {self.token}":
            return web.Response(status=401, text="Unauthorized")
        assert self._client is not None
        async with self._client.request(
            request.method,
            self.upstream + request.rel_url.raw_path_qs,
            data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as upstream:
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body, content_type="application/json")


@pytest.fixture
async def bearer_proxy(alertmanager: AlertmanagerServer) -> AsyncIterator[BearerProxy]:
    proxy = BearerProxy(upstream=alertmanager.url, token=uuid.uuid4().hex)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    proxy.url = f"http://127.0.0.1:{port}"
    proxy._client = aiohttp.ClientSession()
    try:
        yield proxy
    finally:
        await proxy._client.close()
        await runner.cleanup()
