"""The HTTP layer on its own: validation, auth, error bodies, and the OpenAPI document.

The agent behind it is a recorder that answers like the real one, so these tests pin what the
HTTP layer itself decides; readiness is the agent's own judgement, so its test serves a real
agent whose Pinot is unreachable. The end-to-end tests drive the real agent through the same app.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from az_agent.agent.config import parse_config
from az_agent.agent.daemon import Agent
from az_agent.agent.http.app import build_app
from az_agent.agent.http.auth import Authenticator
from az_agent.agent.http.errors import Forbidden
from az_agent.agent.http.openapi import openapi_document
from az_agent.agent.operations.requests import ActivateRequest, PauseRequest
from az_agent.agent.operations.states import AgentState, IllegalTransition, Request
from az_agent.agent.wiring import build_agent
from az_agent.drivers.errors import NotFound
from az_agent.sandbox.postgres import free_port

TOKEN = "s3cret-token"


class RecordingAgent:
    """Answers like an agent in ``state``; remembers the requests it was handed."""

    def __init__(self) -> None:
        self.state = AgentState.STANDBY
        self.calls: list[Any] = []
        self.fail_with: Exception | None = None

    async def pause(self, request: PauseRequest) -> tuple[int, dict[str, Any]]:
        self.calls.append(request)
        if self.state is not AgentState.ACTIVE:
            raise IllegalTransition(self.state, Request.PAUSE)
        return 200, {"state": "PAUSED"}

    async def activate(self, request: ActivateRequest) -> tuple[int, dict[str, Any]]:
        self.calls.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        return 202, {"operation": {"id": "op-1", "kind": "activate"}}

    async def resume(self) -> tuple[int, dict[str, Any]]:
        self.calls.append("resume")
        return 200, {"state": self.state.value}

    def status(self) -> dict[str, Any]:
        return {"zone": "az2", "state": self.state.value}

    def healthz(self) -> tuple[bool, dict[str, Any]]:
        return True, {"ok": True}

    async def readyz(self) -> tuple[bool, dict[str, Any]]:
        return True, {"ok": True}

    def metrics_text(self) -> tuple[bytes, str]:
        return b"az_agent_leader 0.0\n", "text/plain; version=0.0.4; charset=utf-8"


@pytest.fixture
async def served() -> AsyncIterator[tuple[RecordingAgent, str, aiohttp.ClientSession]]:
    agent = RecordingAgent()
    runner = web.AppRunner(build_app(agent, Authenticator(TOKEN)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield agent, f"http://127.0.0.1:{port}", client
    await runner.cleanup()


Served = tuple[RecordingAgent, str, aiohttp.ClientSession]


async def _post(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with client.post(url) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("", "zone"),
        ("zone=", "zone"),
        ("zone=a/b", "zone"),
        ("zone=az1&latestTime=yesterday", "latestTime"),
        ("zone=az1&latestTime=2026-11-22T10:00:00", "latestTime"),
        ("zone=az1&batchSize=0", "batchSize"),
        ("zone=az1&batchSize=-5", "batchSize"),
        ("zone=az1&batchSize=many", "batchSize"),
        ("zone=az1&force=perhaps", "force"),
        ("zone=az1&dryrun=true", "dryrun"),
    ],
)
async def test_activate_rejects_bad_parameters(served: Served, query: str, parameter: str) -> None:
    agent, base, client = served
    status, body = await _post(client, f"{base}/activate?{query}")
    assert status == 400
    assert body["error"] == "bad-parameter"
    assert body["parameter"] == parameter
    assert parameter in body["detail"]
    assert body["requestId"]
    assert agent.calls == []


async def test_activate_passes_parsed_request(served: Served) -> None:
    agent, base, client = served
    status, body = await _post(
        client, f"{base}/activate?zone=az1&latestTime=1795348800000&batchSize=20&dryRun=true"
    )
    assert status == 202
    assert body["operation"]["kind"] == "activate"
    [request] = agent.calls
    assert request.zone == "az1"
    assert request.batch_size == 20
    assert request.dry_run is True
    assert request.latest_time is not None
    assert request.latest_time.isoformat() == "2026-11-22T12:00:00+00:00"


async def test_unknown_zone_is_404(served: Served) -> None:
    agent, base, client = served
    agent.fail_with = NotFound("zone 'nowhere' has no lease and no backups")
    status, body = await _post(client, f"{base}/activate?zone=nowhere")
    assert status == 404
    assert body["error"] == "not-found"
    assert "nowhere" in body["detail"]


async def test_illegal_transition_is_409_with_the_state(served: Served) -> None:
    _, base, client = served
    status, body = await _post(client, f"{base}/pause")
    assert status == 409
    assert body["state"] == "STANDBY"
    assert "cannot pause while STANDBY" in body["detail"]


async def test_pause_rejects_unknown_parameter(served: Served) -> None:
    agent, base, client = served
    agent.state = AgentState.ACTIVE
    status, body = await _post(client, f"{base}/pause?froce=true")
    assert (status, body["parameter"]) == (400, "froce")
    status, _ = await _post(client, f"{base}/pause?force=true&wait=5")
    assert status == 200
    assert agent.calls == [PauseRequest(force=True, wait_seconds=5)]


async def test_posts_need_the_token_gets_do_not(served: Served) -> None:
    agent, base, _ = served
    async with aiohttp.ClientSession() as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
            async with anonymous.post(f"{base}/resume", headers=headers) as response:
                assert response.status == 401
                assert (await response.json())["error"] == "unauthorized"
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with anonymous.post(f"{base}/resume", headers={"X-Az-Agent-Token": TOKEN}) as ok:
            assert ok.status == 200  # relayed through the Kubernetes API server's proxy
        async with anonymous.get(f"{base}/status") as response:
            assert response.status == 200
        async with anonymous.get(f"{base}/metrics") as response:
            assert response.status == 200
            assert "az_agent_leader" in await response.text()
    assert agent.calls == ["resume"]


def test_without_token_only_loopback_may_post() -> None:
    authenticator = Authenticator(None)
    cases = {"127.0.0.1": True, "127.9.9.9": True, "::1": True, "10.1.2.3": False, "": False}
    for remote, allowed in cases.items():
        request = make_mocked_request("POST", "/resume").clone(remote=remote)
        if allowed:
            authenticator.check(request)
        else:
            with pytest.raises(Forbidden):
                authenticator.check(request)


@pytest.fixture
async def unreachable_pinot(tmp_path: Path) -> AsyncIterator[tuple[Agent, str]]:
    """A real agent, wired as ``az-agent run`` wires it, whose Pinot port nobody listens on;
    served over HTTP (not run: readiness needs no leadership)."""
    closed = free_port()
    raw = {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(tmp_path / "bucket")}}},
        "az-service": {
            "config": {
                "zone": "az1",
                "secretsDir": str(tmp_path / "secrets"),
                "pinot": {"controllerUrl": f"http://127.0.0.1:{closed}"},
                "postgres": {"databases": []},
            }
        },
    }
    async with build_agent(parse_config(raw, environ={})) as agent:
        runner = web.AppRunner(build_app(agent, Authenticator(TOKEN)))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield agent, f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


async def test_dependency_down_is_503(unreachable_pinot: tuple[Agent, str]) -> None:
    agent, base = unreachable_pinot
    async with aiohttp.ClientSession() as client, client.get(f"{base}/readyz") as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) > 0
        body = await response.json()
    assert body["ok"] is False
    assert body["down"] == ["pinot", "recovery"]  # served, not run: it never recovers
    assert body["dependencies"]["bucket"] == "ok"
    down = body["dependencies"]["pinot"]
    assert down.startswith("Unavailable: ")
    assert agent.deps.config.service.pinot.controller_url.split("//")[1] in down, down
    document = openapi_document()
    for code in ("200", "503"):
        ref = document["paths"]["/readyz"]["get"]["responses"][code]["content"]
        name = ref["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        jsonschema_rs.Draft4Validator(document["components"]["schemas"][name]).validate(body)
    # The same in /status and the metrics.
    assert agent.status()["dependencies"] == body["dependencies"]
    metrics = agent.metrics_text()[0].decode()
    assert 'az_agent_dependency_up{dependency="pinot"} 0.0' in metrics
    assert 'az_agent_dependency_up{dependency="bucket"} 1.0' in metrics


async def test_unknown_route_is_json_404(served: Served) -> None:
    _, base, client = served
    async with client.get(f"{base}/nope") as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not-found"


def test_openapi_document_matches_the_routes() -> None:
    app = build_app(RecordingAgent(), Authenticator(TOKEN))
    registered = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    documented = {
        (method.upper(), path)
        for path, operations in openapi_document()["paths"].items()
        for method in operations
    }
    assert registered == documented


async def test_openapi_document_is_served(served: Served) -> None:
    _, base, client = served
    async with client.get(f"{base}/openapi.json") as response:
        assert response.status == 200
        assert await response.json() == openapi_document()


OPERATIONS = [
    (method, path, operation)
    for path, operations in openapi_document()["paths"].items()
    for method, operation in operations.items()
]
POSTS = [(path, operation) for method, path, operation in OPERATIONS if method == "post"]
EXAMPLE_TEXT = {"zone": "az1", "latestTime": "1795348800000", "namespace": "observability"}
"""A valid value for each documented string parameter (the schema alone does not give one)."""


def _example(parameter: dict[str, Any]) -> str:
    kind = parameter["schema"]["type"]
    if kind == "boolean":
        return "false" if parameter["schema"].get("default") else "true"
    if kind == "integer":
        return str(parameter["schema"].get("minimum", 0) + 6)
    return EXAMPLE_TEXT[parameter["name"]]


async def _post_recorded(
    served: Served, path: str, query: dict[str, str]
) -> tuple[int, dict[str, Any], Any]:
    """POST ``path?query``; the answer and what the agent was handed (None: it was not called)."""
    agent, base, client = served
    calls = len(agent.calls)
    async with client.post(f"{base}{path}", params=query) as response:
        body = await response.json()
    handed = agent.calls[calls] if len(agent.calls) > calls else None
    return response.status, body, handed


@pytest.mark.parametrize(("path", "operation"), POSTS, ids=[path for path, _ in POSTS])
async def test_documented_query_parameters_are_the_ones_the_handler_takes(
    served: Served, path: str, operation: dict[str, Any]
) -> None:
    served[0].state = AgentState.ACTIVE
    parameters = operation.get("parameters", [])
    required = {p["name"]: _example(p) for p in parameters if p["required"]}
    status, body, baseline = await _post_recorded(served, path, required)
    assert baseline is not None, (status, body)

    for parameter in parameters:
        name = parameter["name"]
        if parameter["required"]:
            query = {k: v for k, v in required.items() if k != name}
            status, body, handed = await _post_recorded(served, path, query)
            assert (status, body.get("parameter"), handed) == (400, name, None), body
            continue
        query = required | {name: _example(parameter)}
        status, body, handed = await _post_recorded(served, path, query)
        assert "unknown parameter" not in body.get("detail", ""), (name, body)
        assert handed is not None, (name, status, body)
        assert handed != baseline, f"{path} accepts {name} but ignores it"
        status, body, handed = await _post_recorded(served, path, query | {"colour": "blue"})
        assert (status, body.get("parameter"), handed) == (400, "colour", None), body

    status, body, handed = await _post_recorded(served, path, required | {"colour": "blue"})
    assert (status, body["error"], body["parameter"], handed) == (
        400,
        "bad-parameter",
        "colour",
        None,
    )
    listed = re.fullmatch(r"colour: unknown parameter \(allowed: (.*)\)", body["detail"])
    assert listed is not None, body["detail"]
    allowed = set(filter(None, listed.group(1).split(", ")))
    assert allowed == {p["name"] for p in parameters}, "the 400 lists what the handler accepts"


@pytest.mark.parametrize(
    ("method", "path", "operation"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
async def test_documented_security_is_what_the_app_enforces(
    served: Served, method: str, path: str, operation: dict[str, Any]
) -> None:
    _, base, _ = served
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.request(method, f"{base}{path}") as response,
    ):
        needs_token = response.status == 401
    assert needs_token == bool(operation.get("security")), (method, path, response.status)
