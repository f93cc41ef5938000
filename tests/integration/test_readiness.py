"""Readiness names every configured dependency that is down, Alertmanager and the Kubernetes
API included, and says the same in ``/status`` and the metrics: an agent wired as
``az-agent run`` wires it, whose dependencies listen nowhere (it starts all the same)."""

from __future__ import annotations

from pathlib import Path

import pytest

from az_agent.agent.config import parse_config
from az_agent.agent.wiring import build_agent
from az_agent.sandbox.postgres import free_port


async def test_every_dependency_down_is_named(tmp_path: Path) -> None:
    raw = {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(tmp_path / "bucket")}}},
        "az-service": {
            "config": {
                "zone": "az1",
                "secretsDir": str(tmp_path / "secrets"),
                "pinot": {"controllerUrl": f"http://127.0.0.1:{free_port()}"},
                "postgres": {"databases": []},
                "alertmanager": {
                    "url": f"http://127.0.0.1:{free_port()}",
                    "matchers": [{"name": "zone", "value": "az1"}],
                },
                "kubernetes": {"enabled": True, "host": f"http://127.0.0.1:{free_port()}"},
            }
        },
    }
    async with build_agent(parse_config(raw, environ={})) as agent:
        ok, body = await agent.readyz()
        assert not ok
        assert body["down"] == ["alertmanager", "kubernetes", "pinot", "recovery"], body
        assert body["dependencies"]["bucket"] == "ok"
        assert body["dependencies"]["kubernetes"].startswith("Unavailable: GET /version")
        assert body["dependencies"]["alertmanager"].startswith("Unavailable: ")
        assert (
            agent.status()["dependencies"]["alertmanager"] == body["dependencies"]["alertmanager"]
        )
        metrics = agent.metrics_text()[0].decode()
        for name, up in (("alertmanager", 0), ("kubernetes", 0), ("pinot", 0), ("bucket", 1)):
            assert f'az_agent_dependency_up{{dependency="{name}"}} {up}.0' in metrics, name


async def test_unreachable_bucket_does_not_stop_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    storage = {
        "type": "s3",
        "useSecret": False,
        "s3": {"bucket": "kfuse-dr", "endpoint": f"http://127.0.0.1:{free_port()}"},
        "retry": {"attempts": 1},
    }
    raw = {
        "global": {"cloudStorage": storage},
        "az-service": {
            "config": {
                "zone": "az1",
                "secretsDir": str(tmp_path / "secrets"),
                "pinot": {"controllerUrl": f"http://127.0.0.1:{free_port()}"},
                "postgres": {"databases": []},
            }
        },
    }
    async with build_agent(parse_config(raw, environ={})) as agent:  # no StartupRefused
        ok, body = await agent.readyz()
        assert not ok
        assert "bucket" in body["down"], body
        assert body["dependencies"]["bucket"].startswith("Unavailable: "), body
