"""The HTTP API: ``/pause``, ``/activate``, ``/status``, ``/resume`` and the probes.

Handlers parse and validate parameters, then hand the request to the agent (an
:class:`AgentApi`); they raise :mod:`~az_agent.agent.http.errors` and never set status codes by
hand. One middleware renders every error as JSON, another enforces authentication on POSTs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web

from az_agent.agent.errors import AgentError
from az_agent.agent.http.auth import Authenticator
from az_agent.agent.http.errors import ApiError, http_status_of
from az_agent.agent.http.openapi import openapi_document
from az_agent.agent.http.params import (
    MAX_BATCH_SIZE,
    MAX_WAIT_SECONDS,
    parse_bool,
    parse_past_timestamp,
    parse_positive_int,
    reject_unknown,
)
from az_agent.agent.operations.requests import ActivateRequest, PauseRequest
from az_agent.drivers.errors import DriverError, NotFound, Unavailable

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AgentApi(Protocol):
    """What the HTTP layer needs from the agent."""

    async def pause(self, request: PauseRequest) -> tuple[int, dict[str, Any]]: ...

    async def activate(self, request: ActivateRequest) -> tuple[int, dict[str, Any]]: ...

    async def resume(self) -> tuple[int, dict[str, Any]]: ...

    def status(self) -> dict[str, Any]: ...

    def healthz(self) -> tuple[bool, dict[str, Any]]: ...

    async def readyz(self) -> tuple[bool, dict[str, Any]]: ...

    def metrics_text(self) -> tuple[bytes, str]: ...


AGENT_KEY = web.AppKey("agent", AgentApi)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render our errors as ``{"error", "detail", "requestId", ...}``; never leak a traceback."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    try:
        response = await handler(request)
    except ApiError as exc:
        body = {"error": exc.code, "detail": exc.detail, "requestId": request_id, **exc.extra}
        return _json(exc.status, body, exc.headers)
    except AgentError as exc:
        answer = http_status_of(exc)
        body = {"error": answer.code, "detail": exc.detail, "requestId": request_id, **exc.extra}
        return _json(answer.status, body, answer.headers)
    except NotFound as exc:
        body = {"error": "not-found", "detail": str(exc), "requestId": request_id}
        return _json(404, body)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        detail = f"{exc.method} is not allowed on {request.path} (allowed: {allowed})"
        body = {"error": "method-not-allowed", "detail": detail, "requestId": request_id}
        return _json(405, body, {"Allow": exc.headers["Allow"]})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = {"error": exc.reason.lower().replace(" ", "-"), "detail": exc.reason}
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
        return _json(exc.status, {**body, "requestId": request_id}, headers)
    except Unavailable as exc:
        return _json(
            503,
            {"error": "dependency-unavailable", "detail": str(exc), "requestId": request_id},
            {"Retry-After": "5"},
        )
    except Exception:
        log.exception(
            "request %s %s failed (request id %s)", request.method, request.path, request_id
        )
        body = {
            "error": "internal",
            "detail": "internal error; see the agent's log",
            "requestId": request_id,
        }
        return _json(500, body)
    response.headers["X-Request-Id"] = request_id
    return response


def _auth_middleware(authenticator: Authenticator) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A request no route takes gets its 404/405 first: there is nothing to authorize.
        routed = request.match_info.http_exception is None
        if routed and request.method not in ("GET", "HEAD", "OPTIONS"):
            authenticator.check(request)
        return await handler(request)

    return middleware


async def _pause(request: web.Request) -> web.StreamResponse:
    query = request.rel_url.query
    reject_unknown(query, ["force", "wait"])
    pause = PauseRequest(
        force=parse_bool("force", query.get("force")),
        wait_seconds=parse_positive_int("wait", query.get("wait"), MAX_WAIT_SECONDS),
    )
    status, body = await request.app[AGENT_KEY].pause(pause)
    return _json(status, body)


async def _activate(request: web.Request) -> web.StreamResponse:
    query = request.rel_url.query
    reject_unknown(
        query, ["zone", "latestTime", "batchSize", "force", "dryRun", "namespace", "forcePause"]
    )
    activate = ActivateRequest.from_query(
        zone=query.get("zone"),
        latest_time=parse_past_timestamp("latestTime", query.get("latestTime"), datetime.now(UTC)),
        batch_size=parse_positive_int("batchSize", query.get("batchSize"), MAX_BATCH_SIZE),
        force=parse_bool("force", query.get("force")),
        dry_run=parse_bool("dryRun", query.get("dryRun")),
        namespace=query.get("namespace") or None,
        force_pause=parse_bool("forcePause", query.get("forcePause")),
    )
    status, body = await request.app[AGENT_KEY].activate(activate)
    refusal = body.get("wouldBeRefused")
    if isinstance(refusal, AgentError):  # a dry run: the answer the real call would get
        answer = http_status_of(refusal)
        body["wouldBeRefused"] = {
            "status": answer.status,
            "error": answer.code,
            "reason": refusal.detail,
            **refusal.extra,
        }
    return _json(status, body)


async def _resume(request: web.Request) -> web.StreamResponse:
    reject_unknown(request.rel_url.query, [])
    status, body = await request.app[AGENT_KEY].resume()
    return _json(status, body)


async def _status(request: web.Request) -> web.StreamResponse:
    return _json(200, request.app[AGENT_KEY].status())


async def _healthz(request: web.Request) -> web.StreamResponse:
    ok, body = request.app[AGENT_KEY].healthz()
    return _json(200 if ok else 503, body)


async def _readyz(request: web.Request) -> web.StreamResponse:
    try:
        ok, body = await request.app[AGENT_KEY].readyz()
    except DriverError as exc:
        raise Unavailable(str(exc)) from exc
    return _json(200 if ok else 503, body, None if ok else {"Retry-After": "5"})


async def _metrics(request: web.Request) -> web.StreamResponse:
    payload, content_type = request.app[AGENT_KEY].metrics_text()
    response = web.Response(body=payload)
    response.headers["Content-Type"] = content_type
    return response


async def _openapi(request: web.Request) -> web.StreamResponse:
    return _json(200, openapi_document())


ROUTES: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
    ("POST", "/pause", _pause),
    ("POST", "/activate", _activate),
    ("POST", "/resume", _resume),
    ("GET", "/status", _status),
    ("GET", "/healthz", _healthz),
    ("GET", "/readyz", _readyz),
    ("GET", "/metrics", _metrics),
    ("GET", "/openapi.json", _openapi),
]


def build_app(agent: AgentApi, authenticator: Authenticator) -> web.Application:
    """The aiohttp application serving ``agent``; auth applies to every non-GET route."""
    app = web.Application(middlewares=[error_middleware, _auth_middleware(authenticator)])
    app[AGENT_KEY] = agent
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


__all__ = ["AGENT_KEY", "ROUTES", "AgentApi", "build_app"]
