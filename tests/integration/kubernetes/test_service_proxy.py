"""Pausing the source agent through the API server's service proxy (fake API server, real HTTP)."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from az_agent.drivers.errors import NotFound, PermissionDenied, Unavailable
from az_agent.drivers.kubernetes.service_proxy import (
    AGENT_TOKEN_HEADER,
    KubernetesServiceProxy,
    ServiceReply,
)
from tests.integration.kubernetes.fake_apiserver import FakeApiServer

SOURCE_NS = "kfuse-az1"


@dataclass
class SourceAgent:
    """The az-agent of the source zone, answering with a scripted status and body."""

    status: int = 200
    body: dict[str, object] = field(default_factory=lambda: {"state": "PAUSED"})
    seen: list[web.Request] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        return web.json_response(self.body, status=self.status)


@pytest.fixture
async def source_agent() -> AsyncIterator[SourceAgent]:
    agent = SourceAgent()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", agent.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    agent.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield agent
    finally:
        await runner.cleanup()


async def test_pause_goes_through_the_service_proxy(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy, source_agent: SourceAgent
) -> None:
    apiserver.add_service(SOURCE_NS, "az-service", 8080, source_agent.url)
    reply = await service_proxy.pause_agent(SOURCE_NS, force=True, agent_token="s3cret")

    assert reply == ServiceReply(200, {"state": "PAUSED"})
    assert reply.ok
    sent = apiserver.requests[-1]
    assert (sent.method, sent.path, sent.query) == (
        "POST",
        "/api/v1/namespaces/kfuse-az1/services/az-service:8080/proxy/pause",
        {"force": "true"},
    )
    assert sent.headers["Authorization"] == f"Bearer {apiserver.token}"
    [arrived] = source_agent.seen
    assert (arrived.method, arrived.path, dict(arrived.query)) == (
        "POST",
        "/pause",
        {"force": "true"},
    )
    assert arrived.headers[AGENT_TOKEN_HEADER] == "s3cret"
    assert "Authorization" not in arrived.headers


async def test_pause_without_force_sends_no_force(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy, source_agent: SourceAgent
) -> None:
    apiserver.add_service(SOURCE_NS, "kfuse-az", "http", source_agent.url)
    await service_proxy.pause_agent(SOURCE_NS, service="kfuse-az", port="http")
    assert apiserver.requests[-1].path.endswith("/services/kfuse-az:http/proxy/pause")
    [arrived] = source_agent.seen
    assert dict(arrived.query) == {}
    assert AGENT_TOKEN_HEADER not in arrived.headers


async def test_the_agents_own_refusal_is_returned_not_raised(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy, source_agent: SourceAgent
) -> None:
    apiserver.add_service(SOURCE_NS, "az-service", 8080, source_agent.url)
    source_agent.status = 409
    source_agent.body = {"error": "illegal transition", "state": "ACTIVATING"}
    reply = await service_proxy.pause_agent(SOURCE_NS)
    assert reply == ServiceReply(409, {"error": "illegal transition", "state": "ACTIVATING"})
    assert not reply.ok
    source_agent.status, source_agent.body = 503, {"error": "pinot unreachable"}
    assert (await service_proxy.pause_agent(SOURCE_NS)).status == 503


async def test_any_method_and_path(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy, source_agent: SourceAgent
) -> None:
    apiserver.add_service(SOURCE_NS, "az-service", 8080, source_agent.url)
    source_agent.body = {"zone": "az1", "state": "ACTIVE"}
    reply = await service_proxy.request("GET", SOURCE_NS, "az-service", 8080, "/status")
    assert reply == ServiceReply(200, {"zone": "az1", "state": "ACTIVE"})
    assert source_agent.seen[-1].path == "/status"


async def test_missing_service_is_not_found(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy
) -> None:
    with pytest.raises(NotFound, match=re.escape('services "az-service" not found')):
        await service_proxy.pause_agent(SOURCE_NS)


async def test_unreachable_source_is_unavailable(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy
) -> None:
    apiserver.add_service(SOURCE_NS, "az-service", 8080, None)
    with pytest.raises(Unavailable, match="no endpoints available"):
        await service_proxy.pause_agent(SOURCE_NS)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    apiserver.add_service(SOURCE_NS, "az-service", 8080, f"http://127.0.0.1:{port}")
    with pytest.raises(Unavailable, match="error trying to reach service: dial tcp"):
        await service_proxy.pause_agent(SOURCE_NS)


async def test_rbac_refusal_is_permission_denied(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy, source_agent: SourceAgent
) -> None:
    apiserver.add_service(SOURCE_NS, "az-service", 8080, source_agent.url)
    apiserver.deny("create", "services/proxy", SOURCE_NS)
    with pytest.raises(PermissionDenied, match='cannot create resource "services/proxy"'):
        await service_proxy.pause_agent(SOURCE_NS)
    assert source_agent.seen == []


async def test_injected_api_server_failure_is_unavailable(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy, source_agent: SourceAgent
) -> None:
    apiserver.add_service(SOURCE_NS, "az-service", 8080, source_agent.url)
    apiserver.fail_next(500, "InternalError")
    with pytest.raises(Unavailable, match="answered 500: injected InternalError"):
        await service_proxy.pause_agent(SOURCE_NS)
    assert source_agent.seen == []


async def test_bad_names_are_refused_before_sending(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy
) -> None:
    with pytest.raises(ValueError, match="namespace"):
        await service_proxy.pause_agent("../kube-system")
    with pytest.raises(ValueError, match="service"):
        await service_proxy.pause_agent(SOURCE_NS, service="Az_Service")
    assert apiserver.requests == []


async def test_ping_answers_while_the_api_server_does_and_says_why_not(
    apiserver: FakeApiServer, service_proxy: KubernetesServiceProxy
) -> None:
    await service_proxy.ping()
    assert apiserver.requests[-1].path == "/version"
    apiserver.faults.append((503, "ServiceUnavailable"))
    with pytest.raises(Unavailable):
        await service_proxy.ping()
    await apiserver.stop()
    with pytest.raises(Unavailable, match="GET /version"):
        await service_proxy.ping()
