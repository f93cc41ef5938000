"""The OpenAPI 3 document served at ``/openapi.json`` (a test keeps it equal to the routes)."""

from __future__ import annotations

from typing import Any

from az_agent import __version__
from az_agent.agent.http.params import MAX_BATCH_SIZE, MAX_WAIT_SECONDS
from az_agent.agent.http.schemas import COMPONENTS


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
_ZONE = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}
_LATEST_TIME = {
    "type": "string",
    "pattern": r"^(\d{1,13}(\.\d+)?"
    r"|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2}))$",
    "description": "not in the future",
}
_ERROR = {"$ref": "#/components/schemas/Error"}
_READINESS = {"$ref": "#/components/schemas/Readiness"}
_NOT_READY = "A dependency is down, or the agent is still recovering (``down`` names them)"
READINESS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ok", "down", "dependencies"],
    "properties": {
        "ok": {"type": "boolean"},
        "down": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The dependencies that did not answer (bucket, pinot, postgres, "
            "alertmanager, kubernetes; recovery while the agent reads its state)",
        },
        "dependencies": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": 'Each dependency\'s answer: "ok", or its error in one line',
        },
        "recovering": {"type": "boolean"},
    },
    "additionalProperties": False,
}


def _responses(*codes: int, ok: str = "OK", bodies: dict[int, str] | None = None) -> dict[str, Any]:
    """The listed answers: errors in the ``Error`` shape, successes as named in ``bodies``."""
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
        named = (bodies or {}).get(code)
        content = {"$ref": f"#/components/schemas/{named}"} if named else _ERROR
        if code < 400 and named is None:
            content = {"type": "object"}
        responses[str(code)] = {
            "description": texts[code],
            "content": {"application/json": {"schema": content}},
        }
    return responses


def openapi_document() -> dict[str, Any]:
    """The API as a client sees it; ``paths`` lists exactly the routes the app serves, and
    every answer's body has its schema (:mod:`.schemas`)."""
    document = _document()
    document["components"]["schemas"].update(COMPONENTS)
    return document


def _document() -> dict[str, Any]:
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
                },
                "Readiness": READINESS_SCHEMA,
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
                            {"type": "integer", "minimum": 1, "maximum": MAX_WAIT_SECONDS},
                            "Seconds to wait for completion before answering 202 (default 300)",
                        ),
                    ],
                    "responses": _responses(
                        200,
                        202,
                        400,
                        401,
                        403,
                        409,
                        503,
                        ok="Paused, or already paused",
                        bodies={200: "PauseAnswer", 202: "PauseAnswer"},
                    ),
                }
            },
            "/activate": {
                "post": {
                    "summary": "Restore from a zone's backups and take over",
                    "security": [{"bearer": []}],
                    "parameters": [
                        _param("zone", _ZONE, "Zone id of the source backup", True),
                        _param(
                            "latestTime",
                            _LATEST_TIME,
                            "Restore what was committed at or before this time "
                            "(RFC 3339, Unix seconds or milliseconds)",
                        ),
                        _param(
                            "batchSize",
                            {"type": "integer", "minimum": 1, "maximum": MAX_BATCH_SIZE},
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
                    "responses": _responses(
                        200,
                        202,
                        400,
                        401,
                        403,
                        404,
                        409,
                        503,
                        ok="dryRun: the plan, and wouldBeRefused",
                        bodies={200: "DryRun", 202: "Accepted"},
                    ),
                }
            },
            "/resume": {
                "post": {
                    "summary": "Lift this agent's silences; resume a paused zone nobody took over",
                    "security": [{"bearer": []}],
                    "responses": _responses(
                        200, 400, 401, 403, 409, 503, bodies={200: "ResumeAnswer"}
                    ),
                }
            },
            "/status": {
                "get": {
                    "summary": "State, leadership, recovery point, operation",
                    "responses": _responses(200, bodies={200: "Status"}),
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Process alive, loop turning",
                    "responses": _responses(200, 503, bodies={200: "Health", 503: "Health"}),
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Dependencies reachable",
                    "responses": {
                        str(code): {
                            "description": text,
                            "content": {"application/json": {"schema": _READINESS}},
                        }
                        for code, text in ((200, "Every dependency answers"), (503, _NOT_READY))
                    },
                }
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
