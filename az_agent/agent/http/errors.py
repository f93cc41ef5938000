"""How errors become HTTP answers; handlers raise, one middleware renders.

Every error body is ``{"error": <code>, "detail": <sentence>, "requestId": <id>, ...extra}``.
Domain errors (:mod:`az_agent.agent.errors`) get their status here and only here; the errors of
the HTTP layer itself (authentication) are :class:`ApiError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from az_agent.agent.errors import (
    AgentError,
    InvalidParameter,
    NotReady,
    OperationFailed,
    UnknownTarget,
    WrongState,
)


class ApiError(Exception):
    """An error of the HTTP layer: its status, a stable code and a human sentence."""

    status = 500
    code = "internal"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers["WWW-Authenticate"] = 'Bearer realm="az-agent"'


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


@dataclass(frozen=True)
class HttpAnswer:
    """The status, code and headers a domain error is answered with."""

    status: int
    code: str
    headers: dict[str, str] = field(default_factory=dict)


_ANSWERS: tuple[tuple[type[AgentError], int, str], ...] = (
    (InvalidParameter, 400, "bad-parameter"),
    (UnknownTarget, 404, "not-found"),
    (WrongState, 409, "conflict"),
    (NotReady, 503, "not-ready"),
    (OperationFailed, 503, "operation-failed"),
)


def http_status_of(exc: AgentError) -> HttpAnswer:
    """The answer for a domain error (500 for a kind this table does not know)."""
    for kind, status, code in _ANSWERS:
        if isinstance(exc, kind):
            headers: dict[str, str] = {}
            if isinstance(exc, NotReady):
                headers["Retry-After"] = str(exc.retry_after)
            elif isinstance(exc, OperationFailed):
                headers["Retry-After"] = "10"
            return HttpAnswer(status, code, headers)
    return HttpAnswer(500, "internal")
