"""Errors the HTTP API answers with; handlers raise them, one middleware renders them.

Every error body is ``{"error": <code>, "detail": <sentence>, "requestId": <id>, ...extra}``.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base: an HTTP status, a stable machine-readable code and a human sentence."""

    status = 500
    code = "internal"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


class BadParameter(ApiError):
    """400: a query parameter is unknown, missing or malformed; ``parameter`` names it."""

    status = 400
    code = "bad-parameter"

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}", parameter=parameter)


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers["WWW-Authenticate"] = 'Bearer realm="az-agent"'


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFoundError(ApiError):
    """404: an unknown zone, or no backup at or before the requested time."""

    status = 404
    code = "not-found"


class Conflict(ApiError):
    """409: the request is not allowed in the current state (the body says which state)."""

    status = 409
    code = "conflict"


class DependencyDown(ApiError):
    """503: a dependency (bucket, Pinot, PostgreSQL, Alertmanager) is unreachable."""

    status = 503
    code = "dependency-unavailable"

    def __init__(self, detail: str, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["Retry-After"] = str(retry_after)


class OperationFailed(ApiError):
    """503: the operation ran and failed; the body holds it, and it can be retried."""

    status = 503
    code = "operation-failed"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["Retry-After"] = "10"
