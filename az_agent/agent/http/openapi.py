"""The OpenAPI 3 document served at ``/openapi.json`` (a test keeps it equal to the routes)."""

from __future__ import annotations

from typing import Any

from az_agent import __version__


def _param(
    name: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


_BOOL = {"type": "boolean", "default": False}
_ERROR = {"$ref": "#/components/schemas/Error"}


def _responses(*codes: int, ok: str = "OK") -> dict[str, Any]:
    texts = {
        200: ok,
        202: "Accepted: the operation runs; follow it in /status",
        400: "A parameter is unknown or malformed (the body names it)",
        401: "Missing or invalid bearer token",
        403: "No token configured and the client is not on loopback",
        404: "Unknown zone, or no backup at or before latestTime",
        409: "Not allowed in the current state (the body gives it)",
        503: "A dependency is unreachable",
    }
    responses: dict[str, Any] = {}
    for code in codes:
        content = _ERROR if code >= 400 else {"type": "object"}
        responses[str(code)] = {
            "description": texts[code],
            "content": {"application/json": {"schema": content}},
        }
    return responses


def openapi_document() -> dict[str, Any]:
    """The API as a client sees it; ``paths`` lists exactly the routes the app serves."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "az-agent",
            "version": __version__,
            "description": "Cross-zone recovery agent: pause the old zone, activate the new "
            "one from the bucket, follow progress, resume alerts.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail", "requestId"],
                    "properties": {
                        "error": {"type": "string"},
                        "detail": {"type": "string"},
                        "requestId": {"type": "string"},
                        "parameter": {"type": "string"},
                        "state": {"type": "string"},
                    },
                }
            },
        },
        "paths": {
            "/pause": {
                "post": {
                    "summary": "Silence alerts, pause ingestion, flush backups, release the lease",
                    "security": [{"bearer": []}],
                    "parameters": [
                        _param("force", _BOOL, "Do not wait for consuming segments to commit"),
                        _param(
                            "wait",
                            {"type": "integer", "minimum": 1},
                            "Seconds to wait for completion before answering 202 (default 300)",
                        ),
                    ],
                    "responses": _responses(200, 202, 400, 401, 403, 409, 503, ok="Paused"),
                }
            },
            "/activate": {
                "post": {
                    "summary": "Restore from a zone's backups and take over",
                    "security": [{"bearer": []}],
                    "parameters": [
                        _param("zone", {"type": "string"}, "Zone id of the source backup", True),
                        _param(
                            "latestTime",
                            {"type": "string"},
                            "Restore what was committed at or before this time "
                            "(RFC 3339, Unix seconds or milliseconds)",
                        ),
                        _param(
                            "batchSize",
                            {"type": "integer", "minimum": 1},
                            "Segments rehydrated per batch",
                        ),
                        _param("force", _BOOL, "Take the source's lease even while it is live"),
                        _param("dryRun", _BOOL, "Return the plan and write nothing"),
                        _param(
                            "namespace",
                            {"type": "string"},
                            "Kubernetes namespace of the source: pause it first (409 with "
                            "the source's answer when it does not pause)",
                        ),
                        _param(
                            "forcePause",
                            _BOOL,
                            "Pause the source with force=true, and go on if it does not pause",
                        ),
                    ],
                    "responses": _responses(200, 202, 400, 401, 403, 404, 409, 503),
                }
            },
            "/resume": {
                "post": {
                    "summary": "Lift this agent's silences; resume a paused zone nobody took over",
                    "security": [{"bearer": []}],
                    "responses": _responses(200, 400, 401, 403, 409, 503),
                }
            },
            "/status": {
                "get": {
                    "summary": "State, leadership, recovery point, operation",
                    "responses": _responses(200),
                }
            },
            "/healthz": {
                "get": {"summary": "Process alive, loop turning", "responses": _responses(200, 503)}
            },
            "/readyz": {
                "get": {"summary": "Dependencies reachable", "responses": _responses(200, 503)}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "text format", "content": {"text/plain": {}}}
                    },
                }
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": _responses(200)}},
        },
    }
