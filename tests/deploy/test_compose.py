"""docker-compose.yml: valid for the Compose specification and for docker-compose (which also
resolves service references), and wired the way the agents need it: each agent's configuration
is one `az-agent config` accepts, naming hosts the file defines, on a bucket both agents share."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from az_agent.agent.config import load_config
from az_agent.emulators.pinot.cli import _parser as emulator_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
AGENTS = ("agent-az1", "agent-az2")
CONFIG_PATH = "/etc/az-agent/config.yaml"
CHECK_JSONSCHEMA = [sys.executable, "-m", "check_jsonschema"]


def _compose(path: Path = COMPOSE) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def _binds(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of the service's volumes (bind mounts and named volumes)."""
    result = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        result[target] = source
    return result


def _docker_compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary is not None, "docker-compose not installed (scripts/test.sh installs it)"
    env = {k: v for k, v in os.environ.items() if k != "AZ_AGENT_TOKEN"}
    return subprocess.run(
        [binary, "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=path.parent,
        env=env,
        timeout=120,
        check=False,
    )


def test_valid_for_the_compose_specification() -> None:
    result = subprocess.run(
        [*CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_accepts_it() -> None:
    result = _docker_compose_config(COMPOSE)
    assert result.returncode == 0, result.stderr


def test_docker_compose_catches_a_broken_reference(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE.read_text().replace("postgres-az1: {condition", "postgres-az9: {condition")
    broken.write_text(text)
    result = _docker_compose_config(broken)
    assert result.returncode != 0
    assert "postgres-az9" in result.stderr


def test_images_are_built_from_the_project_dockerfile() -> None:
    services = _compose()["services"]
    for name in (*AGENTS, "pinot-az1", "pinot-az2"):
        build = services[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]) == ROOT / "deploy" / "Dockerfile"
    for name in ("postgres-az1", "postgres-az2"):
        assert services[name]["image"] == "postgres:15"
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager:")


def test_every_bind_mounted_file_exists() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for source in _binds(service).values():
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: {source}"


def test_two_agents_two_zones_one_bucket() -> None:
    compose = _compose()
    services = compose["services"]
    configs = {}
    for name in AGENTS:
        service = services[name]
        binds = _binds(service)
        config = load_config(str(ROOT / binds[CONFIG_PATH]), environ={})
        configs[name] = config
        assert config.storage.type == "file"
        bucket = Path(config.storage.file.path)
        volume = next(t for t, s in binds.items() if s == "bucket")
        assert bucket.is_relative_to(volume), (bucket, volume)
        service_config = config.service
        assert service_config.http.port == 8080
        assert f":{service_config.http.port}" in service["ports"][0]
        pinot = urlsplit(service_config.pinot.controller_url)
        emulator = services[pinot.hostname or ""]
        args = emulator_parser().parse_args(emulator["entrypoint"][2:])
        assert emulator["entrypoint"][:2] == ["az-agent", "pinot-emulator"]
        assert args.port == pinot.port
        data_volume = next(t for t, s in _binds(emulator).items() if not s.startswith("."))
        assert Path(args.data).is_relative_to(data_volume)
        postgres = services[service_config.postgres.host]
        major = postgres["image"].split(":")[1]
        assert service_config.postgres.bin_dir == f"/usr/lib/postgresql/{major}/bin"
        assert service["environment"]["PGPASSWORD"] == postgres["environment"]["POSTGRES_PASSWORD"]
        assert "AZ_AGENT_TOKEN" in service["environment"]  # POSTs come through the port map
        alertmanager = urlsplit(service_config.alertmanager.url)
        assert alertmanager.hostname in services
        assert set(service["depends_on"]) == {
            pinot.hostname,
            service_config.postgres.host,
            alertmanager.hostname,
        }
    assert {c.zone for c in configs.values()} == {"az1", "az2"}
    assert {c.service.role for c in configs.values()} == {"active", "standby"}
    assert len({c.storage.file.path for c in configs.values()}) == 1


def test_prometheus_scrapes_both_agents_with_the_project_rules() -> None:
    services = _compose()["services"]
    binds = _binds(services["prometheus"])
    config = yaml.safe_load((ROOT / binds["/etc/prometheus/prometheus.yml"]).read_text())
    rules_at = {t for t, s in binds.items() if s == "./deploy/prometheus/rules.yml"}
    assert set(config["rule_files"]) == rules_at != set()
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == {f"{name}:8080" for name in AGENTS}
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]
    assert "9093" in services["alertmanager"]["ports"][0]


@pytest.mark.parametrize("name", AGENTS)
def test_agent_config_passes_az_agent_config(name: str) -> None:
    source = _binds(_compose()["services"][name])[CONFIG_PATH]
    result = subprocess.run(
        [sys.executable, "-m", "az_agent.cli", "config", "--config", str(ROOT / source)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("AZ_AGENT__")},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(rf"zone: {name.removeprefix('agent-')}\b", result.stdout)
