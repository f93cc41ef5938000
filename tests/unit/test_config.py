"""Configuration: Helm-shaped keys, env overrides, zone rules, secrets as files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from az_agent.agent.config import ConfigError, load_config, parse_config
from az_agent.agent.secrets import read_storage_secrets

DOCS_EXAMPLE = """
global:
  cloudStorage:
    type: s3
    useSecret: true
    secretName: cloud-storage-secret
    s3:
      region: eu-west-1
      bucket: kfuse-dr
az-service:
  config:
    zone: "az1"
    backupIntervalMinutes: 30
"""


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(text)
    return str(path)


def test_reference_docs_values_load(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, DOCS_EXAMPLE), environ={})
    assert config.zone == "az1"
    assert config.storage.type == "s3"
    assert config.storage.s3.region == "eu-west-1"
    assert config.service.backup_interval_minutes == 30
    assert config.service.lease.ttl_seconds == 15
    assert config.service.postgres.databases == ["configdb", "orchestratordb"]


def test_embedded_defaults_use_a_local_directory() -> None:
    # Literal values, as README.md documents them: a changed default must change this test.
    overridden = load_config(None, environ={"AZ_AGENT__AZ_SERVICE__CONFIG__ZONE": "az9"})
    assert overridden.zone == "az9"
    config = load_config(None, environ={})  # the override above left the defaults alone
    assert config.storage.type == "file"
    assert config.storage.file.path == "./az-agent-data/bucket"
    assert config.service.secrets_dir == "./az-agent-data/secrets"
    assert config.zone == "az1"
    assert config.service.backup_interval_minutes == 60
    lease = config.service.lease
    assert (lease.ttl_seconds, lease.renew_deadline_seconds, lease.retry_period_seconds) == (
        15,
        10,
        2,
    )
    assert (config.service.http.host, config.service.http.port) == ("0.0.0.0", 8080)


def test_service_override_merges_over_global() -> None:
    raw: dict[str, Any] = {
        "global": {"cloudStorage": {"type": "s3", "prefix": "p", "s3": {"bucket": "shared"}}},
        "az-service": {
            "config": {
                "zone": "az2",
                "cloudStorage": {
                    "secretName": "az-service-storage-secret",
                    "s3": {"bucket": "own"},
                },
            }
        },
    }
    config = parse_config(raw, environ={})
    assert config.storage.s3.bucket == "own"
    assert config.storage.secret_name == "az-service-storage-secret"
    assert config.storage.prefix == "p"
    assert config.storage.type == "s3"
    assert config.global_.cloud_storage is not None
    assert config.global_.cloud_storage.s3.bucket == "shared"


def test_env_overrides_follow_the_naming_rule() -> None:
    env = {
        "AZ_AGENT__GLOBAL__CLOUDSTORAGE__TYPE": "gcs",
        "AZ_AGENT__GLOBAL__CLOUD_STORAGE__GCS__BUCKET": "2024",
        "AZ_AGENT__AZ_SERVICE__CONFIG__ZONE": "123",
        "AZ_AGENT__AZ_SERVICE__CONFIG__POSTGRES__DATABASES": "[a, b]",
        "AZ_AGENT__AZ_SERVICE__CONFIG__BACKUP_INTERVAL_MINUTES": "5",
        "UNRELATED": "x",
    }
    config = parse_config({"global": {"cloudStorage": {"type": "s3"}}}, environ=env)
    assert config.storage.type == "gcs"
    assert config.storage.gcs.bucket == "2024"  # text fields keep digits as text
    assert config.zone == "123"
    assert config.service.postgres.databases == ["a", "b"]
    assert config.service.backup_interval_minutes == 5


def test_unknown_env_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"AZ_AGENT__GLOBAL__CLOUDSTORAGE__S4: unknown key 'S4'"):
        parse_config({}, environ={"AZ_AGENT__GLOBAL__CLOUDSTORAGE__S4": "x"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"global": {"cloudStorage": {"type": "s4"}}}, r"global\.cloudStorage\.type: Input should"),
        (
            {"global": {"cloudStorage": {"type": "s3", "s3": {"buckett": "x"}}}},
            r"global\.cloudStorage\.s3\.buckett: unknown key",
        ),
        ({"az-service": {"config": {"zone": "az1"}}}, r"global\.cloudStorage: required"),
        (
            {"global": {"cloudStorage": {"type": "file"}}, "az-service": {"config": {}}},
            r"az-service\.config\.zone: required",
        ),
        (
            {
                "global": {"cloudStorage": {"type": "file"}},
                "az-service": {"config": {"zone": "../x"}},
            },
            r"az-service\.config\.zone: '\.\./x' must be",
        ),
        (
            {
                "global": {"cloudStorage": {"type": "file"}},
                "az-service": {"config": {"zone": "a", "lease": {"ttlSeconds": 5}}},
            },
            r"az-service\.config\.lease: need ttlSeconds > renewDeadlineSeconds",
        ),
    ],
)
def test_invalid_configuration_is_one_line_naming_the_key(
    raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(raw, environ={})
    assert "\n" not in str(caught.value)


def test_zone_defaults_to_org_release_namespace() -> None:
    raw = {
        "global": {
            "cloudStorage": {"type": "file"},
            "orgId": "acme",
            "releaseName": "kfuse",
            "namespace": "observability",
        }
    }
    assert parse_config(raw, environ={}).zone == "acme-kfuse-observability"


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        load_config(_write(tmp_path, "global:\n  - [unclosed\n"), environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "absent.yaml"), environ={})


def test_storage_secrets_are_read_from_files(tmp_path: Path) -> None:
    secret_dir = tmp_path / "cloud-storage-secret"
    secret_dir.mkdir()
    (secret_dir / "accessKey").write_text("AKIAEXAMPLE\n")
    (secret_dir / "secretKey").write_text("very-secret-value")
    raw = {
        "global": {"cloudStorage": {"type": "s3"}},
        "az-service": {"config": {"zone": "az1", "secretsDir": str(tmp_path)}},
    }
    secrets = read_storage_secrets(parse_config(raw, environ={}))
    assert secrets is not None
    assert secrets.access_key is not None
    assert secrets.secret_key is not None
    assert secrets.access_key.get_secret_value() == "AKIAEXAMPLE"
    assert "very-secret-value" not in repr(secrets)
    assert secrets.secret_key.get_secret_value() == "very-secret-value"


def test_missing_secret_names_the_file_not_the_value(tmp_path: Path) -> None:
    raw = {
        "global": {"cloudStorage": {"type": "azure"}},
        "az-service": {"config": {"zone": "az1", "secretsDir": str(tmp_path)}},
    }
    with pytest.raises(
        ConfigError, match=r"key 'connectionString': cannot read .*connectionString"
    ):
        read_storage_secrets(parse_config(raw, environ={}))


def test_ambient_identity_reads_no_secret(tmp_path: Path) -> None:
    raw = {
        "global": {"cloudStorage": {"type": "gcs", "useSecret": False}},
        "az-service": {"config": {"zone": "az1", "secretsDir": str(tmp_path / "none")}},
    }
    assert read_storage_secrets(parse_config(raw, environ={})) is None
