"""The command line as a user meets it: real processes, real exit codes, real output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

AZ_AGENT = [sys.executable, "-m", "az_agent.cli"]


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AZ_AGENT__")}
    environ.update(env or {})
    return subprocess.run(
        [*AZ_AGENT, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=60
    )


def test_storage_check_on_embedded_defaults_passes(tmp_path: Path) -> None:
    result = _run(["storage-check"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "storage-check: type=file zone=az1"
    for capability in (
        "write",
        "read back",
        "list",
        "create-only race",
        "compare-and-swap",
        "delete",
    ):
        assert any(line.startswith("ok") and capability in line for line in lines), capability
    assert lines[-1].startswith("8/8 probes passed")
    leftovers = [p for p in (tmp_path / "az-agent-data/bucket").rglob("*") if p.is_file()]
    assert [p for p in leftovers if ".az-" not in str(p)] == []


def test_storage_check_fails_on_unusable_bucket(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a directory")
    config = tmp_path / "c.yaml"
    config.write_text(
        "global:\n  cloudStorage:\n    type: file\n    file: {path: blocker}\n"
        "az-service:\n  config:\n    zone: az1\n"
    )
    result = _run(["storage-check", "--config", str(config)], tmp_path)
    assert result.returncode == 1
    assert "FAIL  reach bucket" in result.stdout
    assert "0/1 probes passed: NOT usable for failover" in result.stdout


def test_config_prints_effective_values_with_secrets_redacted(tmp_path: Path) -> None:
    secret_dir = tmp_path / "secrets" / "cloud-storage-secret"
    secret_dir.mkdir(parents=True)
    (secret_dir / "accessKey").write_text("AKIA-do-not-print")
    (secret_dir / "secretKey").write_text("s3cr3t-do-not-print")
    config = tmp_path / "c.yaml"
    config.write_text(
        "global:\n  cloudStorage:\n    type: s3\n    s3: {bucket: kfuse-dr}\n"
        f"az-service:\n  config:\n    zone: az1\n    secretsDir: {tmp_path / 'secrets'}\n"
    )
    result = _run(
        ["config", "--config", str(config)],
        tmp_path,
        {"AZ_AGENT__GLOBAL__CLOUDSTORAGE__S3__REGION": "ap-south-1"},
    )
    assert result.returncode == 0, result.stderr
    assert "do-not-print" not in result.stdout + result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["az-service"]["config"]["cloudStorage"]["s3"]["region"] == "ap-south-1"
    assert document["az-service"]["config"]["zone"] == "az1"
    assert set(document["secrets"].values()) == {"<redacted>"}
    assert len(document["secrets"]) == 2


def test_invalid_config_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("global:\n  cloudStorage:\n    type: s3\n    s3: {bucket: x}\n")
    result = _run(["config", "--config", str(config)], tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("az-agent: configuration error: global.cloudStorage.s3.bucket:")


def test_unknown_log_level_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _run(["run", "--log-level", "bogus"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line == "az-agent: --log-level 'bogus' is not one of DEBUG, INFO, WARNING, ERROR"
    assert not (tmp_path / "az-agent-data").exists(), "it refused before touching anything"
