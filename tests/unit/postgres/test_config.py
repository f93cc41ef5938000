"""PostgreSQL settings: the Helm-like keys, their validation, and the password resolver."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from az_agent.drivers.errors import Misconfigured
from az_agent.drivers.postgres.config import PostgresSettings, resolve_password


def test_defaults_match_the_reference_values() -> None:
    settings = PostgresSettings.model_validate({})
    assert settings.databases == ["configdb", "orchestratordb"]
    assert (settings.host, settings.port, settings.user) == ("kfuse-postgresql", 5432, "postgres")
    assert settings.sslmode == "prefer"
    assert settings.dump_compression == 6
    assert settings.exclude_tables == {}
    assert settings.retention.keep == 24
    assert settings.retention.max_age_days is None


def test_camel_case_keys() -> None:
    settings = PostgresSettings.model_validate(
        {
            "passwordSecret": "pg",
            "binDir": "/opt/pg/bin",
            "sslmode": "verify-full",
            "connectTimeoutSeconds": 3,
            "excludeTables": {"configdb": ["public.audit_*"]},
            "dumpCompression": 0,
            "retention": {"keep": 3, "maxAgeDays": 7},
        }
    )
    assert settings.exclude_tables == {"configdb": ["public.audit_*"]}
    assert settings.retention.max_age_days == 7
    assert settings.connect_timeout_seconds == 3


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"excludeTables": {"otherdb": ["t"]}}, "excludeTables names databases not in"),
        ({"databases": ["postgres"]}, "maintenanceDatabase 'postgres' cannot also be"),
        ({"databases": ["a" * 64]}, "1..63 bytes"),
        ({"databases": ["a", "a"]}, "each name may appear once"),
        ({"sslmode": "sometimes"}, "sslmode"),
        ({"dumpCompression": 10}, "dumpCompression"),
        ({"retention": {"keep": 0}}, "keep"),
        ({"unknownKey": 1}, "unknownKey"),
    ],
)
def test_invalid_settings_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PostgresSettings.model_validate(values)


def test_password_from_the_secret_file(tmp_path: Path) -> None:
    (tmp_path / "pg-secret").mkdir()
    (tmp_path / "pg-secret" / "password").write_text("s3cret with space \n")
    settings = PostgresSettings.model_validate({"passwordSecret": "pg-secret"})
    password = resolve_password(settings, tmp_path, {"PGPASSWORD": "from-env"})
    assert password is not None
    assert password.get_secret_value() == "s3cret with space "


def test_password_from_the_environment_when_no_secret_is_named() -> None:
    settings = PostgresSettings.model_validate({})
    password = resolve_password(settings, None, {"PGPASSWORD": "from-env"})
    assert password is not None
    assert password.get_secret_value() == "from-env"
    assert resolve_password(settings, None, {}) is None


def test_unreadable_or_empty_secret_is_misconfigured(tmp_path: Path) -> None:
    settings = PostgresSettings.model_validate({"passwordSecret": "pg-secret"})
    with pytest.raises(Misconfigured, match=r"cannot read .*pg-secret/password"):
        resolve_password(settings, tmp_path, {})
    (tmp_path / "pg-secret").mkdir()
    (tmp_path / "pg-secret" / "password").write_text("\n")
    with pytest.raises(Misconfigured, match="is empty"):
        resolve_password(settings, tmp_path, {})
    with pytest.raises(Misconfigured, match="secretsDir is not"):
        resolve_password(settings, None, {})
