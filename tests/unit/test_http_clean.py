"""Every request answered cleanly: malformed credentials, oversized or unparseable requests,
methods a route does not take, repeated or out-of-range parameters, and loopback trust.

Served the way ``az-agent run`` serves (:class:`ApiRunner`), with raw sockets where a client
library would refuse to send what a broken or hostile client sends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from az_agent.agent.errors import WrongState
from az_agent.agent.http.app import build_app
from az_agent.agent.http.auth import Authenticator
from az_agent.agent.http.params import MAX_BATCH_SIZE
from az_agent.agent.http.server import MAX_LINE_SIZE, ApiRunner
from az_agent.agent.operations.requests import ActivateRequest
from tests.unit.test_http_api import TOKEN, RecordingAgent

ERROR_KEYS = {"error", "detail", "requestId"}


@asynccontextmanager
async def serving(
    agent: RecordingAgent, authenticator: Authenticator
) -> AsyncIterator[tuple[str, int]]:
    runner = ApiRunner(build_app(agent, authenticator), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield "127.0.0.1", port
    finally:
        await runner.cleanup()


@pytest.fixture
async def address() -> AsyncIterator[tuple[str, int]]:
    async with serving(RecordingAgent(), Authenticator(TOKEN)) as where:
        yield where


async def raw_request(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], Any]:
    """Send ``request`` as bytes; the status, headers and JSON body of the answer."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
        await writer.wait_closed()
    assert headers["content-type"].startswith("application/json"), headers
    return status, headers, json.loads(body)


def post(path: str, *headers: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: agent", *headers, b"Content-Length: 0"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"Authorization: Bearer \xff\xfe\xfd", "not valid UTF-8"),
        (b"X-Az-Agent-Token: caf\xe9", "not valid UTF-8"),
        (b"Authorization: Bearer " + b"t" * 5000, "longer than"),
    ],
)
async def test_malformed_credentials_are_401(
    address: tuple[str, int], header: bytes, why: str
) -> None:
    status, headers, body = await raw_request(address, post("/resume", header))
    assert status == 401, body
    assert body["error"] == "unauthorized"
    assert why in body["detail"]
    assert headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /" + b"a" * (MAX_LINE_SIZE + 10) + b" HTTP/1.1\r\nHost: agent\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost: agent\r\nX-Big: "
        + b"a" * (MAX_LINE_SIZE + 10)
        + b"\r\n\r\n",
        post("/resume", b"Authorization: Bearer " + b"t" * (MAX_LINE_SIZE + 10)),
    ],
    ids=["request-line", "header", "authorization"],
)
async def test_oversized_requests_get_the_json_error_shape(
    address: tuple[str, int], request_bytes: bytes
) -> None:
    status, headers, body = await raw_request(address, request_bytes)
    assert status == 431
    assert set(body) == ERROR_KEYS
    assert body["error"] == "request-too-large"
    assert str(MAX_LINE_SIZE) in body["detail"]
    assert "aaaa" not in body["detail"], "echoes the request"
    assert "tttt" not in body["detail"], "echoes the credential"
    assert headers["x-request-id"] == body["requestId"]


async def test_an_unparseable_request_gets_the_json_error_shape(address: tuple[str, int]) -> None:
    status, _, body = await raw_request(address, b"BLAH\r\n\r\n")
    assert (status, set(body), body["error"]) == (400, ERROR_KEYS, "bad-request")


@pytest.mark.parametrize(
    ("method", "path", "allow"), [("GET", "/pause", "POST"), ("DELETE", "/status", "GET")]
)
async def test_a_method_the_route_does_not_take_is_405_with_allow(
    address: tuple[str, int], method: str, path: str, allow: str
) -> None:
    request = f"{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Length: 0\r\n\r\n".encode()
    if method != "GET":
        request = request.replace(b"Host:", f"Authorization: Bearer {TOKEN}\r\nHost:".encode())
    status, headers, body = await raw_request(address, request)
    assert status == 405, body
    assert allow in headers["allow"]
    assert body["error"] == "method-not-allowed"
    assert method in body["detail"]
    assert allow in body["detail"]


def _future() -> str:
    return (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("query", "parameter", "says"),
    [
        ("zone=az1&zone=az2", "zone", "more than once"),
        ("zone=az1&force=true&force=false", "force", "more than once"),
        (f"zone=az1&batchSize={MAX_BATCH_SIZE + 1}", "batchSize", f"at most {MAX_BATCH_SIZE}"),
        ("zone=az1&batchSize=99999999999999999999999", "batchSize", "positive integer"),
        (lambda: f"zone=az1&latestTime={_future()}", "latestTime", "in the future"),
    ],
)
async def test_bad_parameters_name_the_parameter(
    address: tuple[str, int], query: str | Callable[[], str], parameter: str, says: str
) -> None:
    text = query() if callable(query) else query
    auth = f"Authorization: Bearer {TOKEN}".encode()
    status, _, body = await raw_request(address, post(f"/activate?{text}", auth))
    assert (status, body["error"], body["parameter"]) == (400, "bad-parameter", parameter), body
    assert says in body["detail"]


async def test_the_largest_batch_size_is_accepted(address: tuple[str, int]) -> None:
    auth = f"Authorization: Bearer {TOKEN}".encode()
    query = f"zone=az1&batchSize={MAX_BATCH_SIZE}&latestTime=2026-01-01T00:00:00Z"
    status, _, body = await raw_request(address, post(f"/activate?{query}", auth))
    assert status == 202, body


async def test_repeated_pause_parameter_is_400(address: tuple[str, int]) -> None:
    auth = f"Authorization: Bearer {TOKEN}".encode()
    status, _, body = await raw_request(address, post("/pause?wait=5&wait=6", auth))
    assert (status, body["parameter"]) == (400, "wait")


@pytest.mark.parametrize(("trust", "expected"), [(True, 200), (False, 403)])
async def test_loopback_is_trusted_without_a_token_unless_configured_not_to(
    trust: bool, expected: int
) -> None:
    agent = RecordingAgent()
    async with (
        serving(agent, Authenticator(None, trust_loopback=trust)) as (host, port),
        aiohttp.ClientSession() as client,
        client.post(f"http://{host}:{port}/resume") as response,
    ):
        assert response.status == expected
        body = await response.json()
    if expected == 403:
        assert body["error"] == "forbidden"
        assert "trustLoopback" in body["detail"]
        assert agent.calls == []
    else:
        assert agent.calls == ["resume"]


class RefusingDryRun(RecordingAgent):
    """A dry run whose real call would be refused: the plan, and the refusal as an error."""

    async def activate(self, request: ActivateRequest) -> tuple[int, dict[str, Any]]:
        self.calls.append(request)
        refusal = WrongState("zone 'az1' is live", state="STANDBY", retryAfterSeconds=3.0)
        return 200, {"dryRun": True, "wouldBeRefused": refusal}


async def test_a_dry_run_renders_the_refusal_it_would_get() -> None:
    async with (
        serving(RefusingDryRun(), Authenticator(TOKEN)) as (host, port),
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as client,
        client.post(f"http://{host}:{port}/activate?zone=az1&dryRun=true") as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["wouldBeRefused"] == {
        "status": 409,
        "error": "conflict",
        "reason": "zone 'az1' is live",
        "state": "STANDBY",
        "retryAfterSeconds": 3.0,
    }


async def test_an_unrouted_method_is_405_before_any_credential_is_asked(
    address: tuple[str, int],
) -> None:
    """Nothing to authorize when no route takes the request (schemathesis found 401 here)."""
    request = b"TRACE /status HTTP/1.1\r\nHost: agent\r\nContent-Length: 0\r\n\r\n"
    status, headers, body = await raw_request(address, request)
    assert (status, headers["allow"], body["error"]) == (405, "GET", "method-not-allowed"), body
