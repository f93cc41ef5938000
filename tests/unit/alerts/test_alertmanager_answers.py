"""Answers the Alertmanager 0.25 of the integration tests never gives, from a scripted stub.

Newer Alertmanagers answer 404 to ``DELETE`` of an unknown id; proxies and overloaded servers
answer 403, 429 and 503. Each must map to the documented error, and ``expire`` must ask with a
``GET`` before declaring a 5xx harmless.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from aiohttp import web

from az_agent.drivers.alerts.alertmanager import AlertmanagerSilences
from az_agent.drivers.alerts.base import Matcher
from az_agent.drivers.errors import Misconfigured, NotFound, PermissionDenied, Unavailable

SILENCE_ID = str(uuid.uuid4())


def _silence(state: str) -> dict[str, object]:
    return {
        "id": SILENCE_ID,
        "status": {"state": state},
        "updatedAt": "2026-11-22T03:40:50.327Z",
        "comment": "c",
        "createdBy": "t",
        "startsAt": "2026-11-22T03:40:50.327Z",
        "endsAt": "2026-11-22T04:40:50.327Z",
        "matchers": [{"name": "a", "value": "b", "isRegex": False, "isEqual": True}],
    }


@dataclass
class Stub:
    """Replies scripted per ``(method, path)``; records every request."""

    replies: dict[tuple[str, str], tuple[int, object]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        status, body = self.replies[(request.method, request.path)]
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    scripted = Stub()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    scripted.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield scripted
    finally:
        await runner.cleanup()


@pytest.fixture
async def manager(stub: Stub) -> AsyncIterator[AlertmanagerSilences]:
    async with AlertmanagerSilences(stub.url, matchers=[Matcher("a", "b")]) as opened:
        yield opened


PATH = f"/api/v2/silence/{SILENCE_ID}"


async def test_404_on_delete_is_done_without_asking_again(
    stub: Stub, manager: AlertmanagerSilences
) -> None:
    stub.replies[("DELETE", PATH)] = (404, {"code": 404, "message": "silence not found"})
    await manager.expire(SILENCE_ID)
    assert stub.requests == [("DELETE", PATH)]


@pytest.mark.parametrize(("get_status", "state"), [(404, None), (200, "expired")])
async def test_5xx_on_delete_is_done_when_get_confirms_it(
    stub: Stub, manager: AlertmanagerSilences, get_status: int, state: str | None
) -> None:
    stub.replies[("DELETE", PATH)] = (500, "silence not found")
    stub.replies[("GET", PATH)] = (get_status, _silence(state) if state else None)
    await manager.expire(SILENCE_ID)
    assert stub.requests == [("DELETE", PATH), ("GET", PATH)]


async def test_5xx_on_delete_of_a_live_silence_is_unavailable(
    stub: Stub, manager: AlertmanagerSilences
) -> None:
    stub.replies[("DELETE", PATH)] = (503, "overloaded")
    stub.replies[("GET", PATH)] = (200, _silence("active"))
    with pytest.raises(Unavailable, match="answered 503: overloaded"):
        await manager.expire(SILENCE_ID)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (403, PermissionDenied),
        (401, Misconfigured),
        (422, Misconfigured),
        (429, Unavailable),
        (502, Unavailable),
        (404, NotFound),
    ],
)
async def test_create_errors_are_typed(
    stub: Stub, manager: AlertmanagerSilences, status: int, error: type[Exception]
) -> None:
    stub.replies[("POST", "/api/v2/silences")] = (status, {"code": status, "message": "why"})
    with pytest.raises(error, match=f"answered {status}: why"):
        await manager.silence(comment="pause", duration=timedelta(hours=1))


async def test_route_prefix_and_credentials_stay_out_of_messages(stub: Stub) -> None:
    url = stub.url.replace("http://", "http://user:secret@") + "/alertmanager/"
    stub.replies[("POST", "/alertmanager/api/v2/silences")] = (500, "boom")
    async with AlertmanagerSilences(url, matchers=[Matcher("a", "b")]) as manager:
        with pytest.raises(Unavailable) as caught:
            await manager.silence(comment="pause", duration=timedelta(hours=1))
    assert "secret" not in str(caught.value)
    assert stub.requests == [("POST", "/alertmanager/api/v2/silences")]


@pytest.mark.parametrize("answer", ["<html>not alertmanager</html>", {}, {"other": 1}])
async def test_a_2xx_that_is_not_alertmanagers_is_misconfigured(
    stub: Stub, manager: AlertmanagerSilences, answer: object
) -> None:
    stub.replies[("POST", "/api/v2/silences")] = (200, answer)
    stub.replies[("GET", PATH)] = (200, answer)
    with pytest.raises(Misconfigured, match="answer"):
        await manager.silence(comment="pause", duration=timedelta(hours=1))
    with pytest.raises(Misconfigured, match="answer"):
        await manager.get(SILENCE_ID)
