"""One zone's agent configuration on a file bucket, as the in-process test and benchmark rigs
build it (short lease, quick Pinot polls, no PostgreSQL unless asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from az_agent.agent.config import AgentConfig, parse_config

LEASE = {"ttlSeconds": 4, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 1}


def file_zone_config(bucket: Path, zone: str, pinot_url: str, **service: Any) -> AgentConfig:
    """``zone``'s agent on the file bucket ``bucket`` and the Pinot at ``pinot_url``; the keys
    of ``service`` are set under ``az-service.config`` (camelCase, as in the YAML; ``lease``
    among them replaces the short default)."""
    raw = {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(bucket)}}},
        "az-service": {
            "config": {
                "zone": zone,
                "lease": LEASE,
                "pinot": {"controllerUrl": pinot_url, "pollIntervalSeconds": 0.2},
                "postgres": {"databases": []},
                **service,
            }
        },
    }
    return parse_config(raw, environ={})
