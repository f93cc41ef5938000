"""JSON Schemas (OpenAPI 3.0 dialect) of every body the API answers with.

``/status`` is described field by field, with the names scripts depend on required
(:mod:`az_agent.agent.status`); the nested backup reports are open objects whose main fields are
named. A schemathesis run against a live agent (tests/integration/test_api_schema.py) checks
every answer against these.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_NUM: Schema = {"type": "number"}
_BOOL: Schema = {"type": "boolean"}
_TIME: Schema = {"type": "string", "description": "RFC 3339"}
STATES = ["STANDBY", "ACTIVE", "PAUSING", "PAUSED", "ACTIVATING", "FAILED", "FENCED", "RECOVERING"]

ERROR: Schema = _obj(
    {
        "error": {**_STR, "description": "Stable code: bad-parameter, unauthorized, conflict..."},
        "detail": {**_STR, "description": "One sentence for a human"},
        "requestId": {**_STR, "description": "Also in the X-Request-Id header and the log"},
        "parameter": {**_STR, "description": "The bad parameter (400)"},
        "state": {**_STR, "description": "The agent's current state (409)"},
        "retryAfterSeconds": {**_NUM, "description": "When a live source lease may expire"},
        "primaryZone": {**_STR, "description": "The group's primary when it is not the source"},
        "term": _INT,
        "holder": {**_STR, "description": "Who holds a lease live"},
        "takenOverBy": _STR,
        "operation": _nullable(_ref("Operation")),
        "source": {"description": "The source agent's answer to its pause"},
    },
    ["error", "detail", "requestId"],
)

PHASE: Schema = _obj(
    {
        "name": _STR,
        "status": {**_STR, "enum": ["pending", "running", "done", "failed", "skipped"]},
        "seconds": _nullable(_NUM),
        "detail": _nullable(_STR),
    },
    ["name", "status"],
)

OPERATION: Schema = _obj(
    {
        "id": _STR,
        "kind": {**_STR, "enum": ["pause", "activate"]},
        "phase": _nullable(_STR),
        "status": {**_STR, "enum": ["running", "succeeded", "failed"]},
        "progress": _obj(
            {
                "segmentsTotal": _INT,
                "segmentsDone": _INT,
                "bytesTotal": _INT,
                "bytesDone": _INT,
            }
        ),
        "error": _nullable(_STR),
        "startedAt": _TIME,
        "finishedAt": _nullable(_TIME),
        "durationSeconds": _NUM,
        "bytesPerSecond": _NUM,
        "etaSeconds": _nullable(_NUM),
        "phases": {"type": "array", "items": PHASE},
        "request": {"type": "object"},
        "sourceZone": _nullable(_STR),
        "result": {"type": "object"},
        "warnings": {"type": "array", "items": _STR},
    },
    ["id", "kind", "phase", "status", "progress", "error", "startedAt", "phases"],
)

_CHECK: Schema = _obj({"ok": _BOOL, "detail": _STR}, ["ok"])
ZONE_HEALTH: Schema = _obj(
    {
        "zone": _STR,
        "status": {**_STR, "enum": ["healthy", "unhealthy", "unknown"]},
        "sequence": {**_INT, "description": "Grows with every publication (or this agent's round)"},
        "measuredAt": _TIME,
        "holder": {**_STR, "description": "The agent that measured it"},
        "checks": {
            "type": "object",
            "additionalProperties": _CHECK,
            "description": "pinot-controller, pinot-brokers, pinot-servers, postgres, ingestion",
        },
    },
    ["zone", "status", "sequence", "measuredAt", "holder", "checks"],
)
HEALTH_VIEW: Schema = _obj(
    {
        "zone": _nullable({**ZONE_HEALTH, "description": "This zone as this agent measured it"}),
        "published": {**_BOOL, "description": "zone is what this agent published as leader"},
        "peerZone": _nullable(_STR),
        "peer": _nullable({**ZONE_HEALTH, "description": "The peer's last health.json"}),
    },
    ["zone", "published", "peerZone", "peer"],
)

STATUS: Schema = _obj(
    {
        "zone": _STR,
        "state": {**_STR, "enum": STATES, "description": "RECOVERING until the state is read"},
        "allowedRequests": {
            "type": "array",
            "items": {**_STR, "enum": ["pause", "activate", "resume"]},
        },
        "leader": {**_BOOL, "description": "This agent holds the zone's lease"},
        "leading": {**_BOOL, "description": "Its leader session runs: backups are being taken"},
        "epoch": _INT,
        "holder": {**_STR, "description": "This agent incarnation's holder id"},
        "lease": _obj(
            {
                "holder": _nullable(_STR),
                "epoch": _nullable(_INT),
                "state": _nullable({**_STR, "enum": ["active", "paused", "released"]}),
                "secondsSinceRenewal": _nullable(_NUM),
                "secondsUnchanged": _nullable(_NUM),
                "acquiredAt": _nullable(_TIME),
            },
            ["holder", "epoch", "state"],
        ),
        "primary": _nullable(
            _obj(
                {
                    "group": _STR,
                    "zone": _nullable(_STR),
                    "term": _INT,
                    "since": _nullable(_TIME),
                    "isThisZone": _BOOL,
                    "previousZone": _nullable({**_STR, "description": "Whence it was claimed"}),
                    "automatic": _nullable(
                        {**_STR, "description": "Why an automatic failover claimed it"}
                    ),
                },
                ["group", "zone", "term", "isThisZone"],
            )
        ),
        "fencedBy": _nullable(_STR),
        "automaticFailover": _obj(
            {
                "enabled": _BOOL,
                "sourceZone": _nullable(_STR),
                "lastDecision": _nullable(
                    {**_STR, "description": "What its last cycle saw and decided, one sentence"}
                ),
            },
            ["enabled", "sourceZone", "lastDecision"],
        ),
        "rpoSeconds": _obj(
            {"segments": _nullable(_NUM), "postgres": _nullable(_NUM)},
            description="Recovery point per data kind; null when not backing it up",
        ),
        "backups": _obj(
            {
                "segments": _obj(
                    {
                        "leading": _BOOL,
                        "rpoSeconds": _nullable(_NUM),
                        "pending": _INT,
                        "segmentsBackedUp": _INT,
                        "lastPollAt": _nullable(_TIME),
                    }
                ),
                "postgres": _obj(
                    {
                        "enabled": _BOOL,
                        "leading": _BOOL,
                        "rpoSeconds": _nullable(_NUM),
                        "databases": {"type": "object", "additionalProperties": {"type": "object"}},
                    }
                ),
            },
            ["segments", "postgres"],
        ),
        "alerts": _obj({"silencing": _BOOL}),
        "standby": _obj(
            {
                "mode": {**_STR, "enum": ["cold", "warm"]},
                "following": _nullable({**_STR, "description": "Warm: the primary zone followed"}),
                "behindEntries": {**_INT, "description": "Primary log entries not applied yet"},
                "behindSeconds": {**_NUM, "description": "Age of the oldest of them; 0 if none"},
                "followedSeq": {**_INT, "description": "Applied through this primary entry"},
                "lastStep": _nullable(_TIME),
                "lastError": _nullable(_STR),
            },
            ["mode"],
            description="Warm standby fields only in mode warm",
        ),
        "health": HEALTH_VIEW,
        "dependencies": {
            "type": "object",
            "additionalProperties": _STR,
            "description": 'Each dependency\'s last probe: "ok" or its error in one line',
        },
        "failure": _nullable({**_STR, "description": "Why FAILED outside any operation"}),
        "operation": _nullable(OPERATION),
        "time": _TIME,
        "recoveryError": _nullable(_STR),
    },
    [
        "zone",
        "state",
        "allowedRequests",
        "leader",
        "leading",
        "epoch",
        "holder",
        "lease",
        "primary",
        "rpoSeconds",
        "backups",
        "operation",
        "health",
        "time",
    ],
)

HEALTH: Schema = _obj(
    {"ok": _BOOL, "state": _STR, "loopLagSeconds": _NUM, "recovering": _BOOL},
    ["ok", "state"],
)

PAUSE_ANSWER: Schema = _obj(
    {
        "state": {**_STR, "enum": STATES},
        "operation": _nullable(OPERATION),
        "alreadyHeld": {**_BOOL, "description": "Already paused: nothing was done"},
    },
    ["state", "operation"],
)

ACCEPTED: Schema = _obj({"operation": OPERATION}, ["operation"])

REFUSAL: Schema = _obj(
    {"status": _INT, "error": _STR, "reason": _STR},
    ["status", "error", "reason"],
    description="What the real call would answer (plus the error's extra fields)",
)

DRY_RUN: Schema = _obj(
    {
        "dryRun": {**_BOOL, "enum": [True]},
        "request": {"type": "object"},
        "workloads": _nullable(
            _obj(
                {
                    "namespace": _STR,
                    "workloads": _nullable(
                        {
                            "type": "array",
                            "items": _obj(
                                {
                                    "kind": _STR,
                                    "name": _STR,
                                    "replicas": _INT,
                                    "readyReplicas": _INT,
                                    "target": _INT,
                                    "from": {**_STR, "enum": ["configured", "recorded", "default"]},
                                    "scale": _BOOL,
                                },
                                ["kind", "name", "replicas", "target", "from", "scale"],
                            ),
                        }
                    ),
                    "error": {**_STR, "description": "Why the workloads could not be read"},
                },
                ["namespace", "workloads"],
                description="A cold standby's workloads the activation scales up (coldStandby)",
            )
        ),
        "postgres": _nullable(
            _obj({"zone": _STR, "latestTime": _nullable(_TIME), "dumps": {"type": "object"}})
        ),
        "tablesToCreate": {"type": "array", "items": _STR},
        "segments": _obj({"toMove": _INT, "bytesToMove": _INT}, ["toMove", "bytesToMove"]),
        "segmentsAlreadyPresent": _INT,
        "estimatedSeconds": _NUM,
        "wouldBeRefused": _nullable(REFUSAL),
    },
    ["dryRun", "segments", "estimatedSeconds", "wouldBeRefused"],
)

RESUME_ANSWER: Schema = _obj(
    {
        "state": {**_STR, "enum": STATES},
        "epoch": _INT,
        "tablesResumed": {"type": "array", "items": _STR},
        "silencesLifted": {"type": "array", "items": _STR},
        "workloads": _nullable(
            {**_STR, "description": "Workloads a pause scaled to 0, scaled back up (coldStandby)"}
        ),
    },
    ["state", "silencesLifted"],
)

COMPONENTS: dict[str, Schema] = {
    "Error": ERROR,
    "Operation": OPERATION,
    "Status": STATUS,
    "Health": HEALTH,
    "PauseAnswer": PAUSE_ANSWER,
    "Accepted": ACCEPTED,
    "DryRun": DRY_RUN,
    "ResumeAnswer": RESUME_ANSWER,
}
"""Added to ``components.schemas`` beside ``Readiness``; responses refer to them by name."""

__all__ = ["COMPONENTS", "STATES"]
