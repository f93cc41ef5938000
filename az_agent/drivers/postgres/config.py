"""Settings of the PostgreSQL dumps and restores (``az-service.config.postgres``), and the
resolver of the password, which lives in a mounted secret or in ``PGPASSWORD``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from az_agent.drivers.errors import Misconfigured
from az_agent.drivers.settings_base import SettingsModel

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

MAX_NAME_BYTES = 63
"""PostgreSQL truncates identifiers longer than NAMEDATALEN - 1 bytes; we refuse them instead."""

PASSWORD_KEY = "password"
"""Key (file name) of the password inside the secret directory named by ``passwordSecret``."""


class RetentionSettings(SettingsModel):
    """How many dumps per database the log keeps; the newest good dump is never deleted."""

    keep: int = Field(default=24, ge=1, description="Keep at least the newest N good dumps.")
    max_age_days: float | None = Field(
        default=None,
        gt=0,
        description="Dumps older than this (beyond the newest `keep`) are deleted; null = no age "
        "limit.",
    )


class PostgresSettings(SettingsModel):
    """Connection, databases and dump options; the password is resolved separately."""

    host: str = Field(
        default="kfuse-postgresql", description="Server host name or socket directory."
    )
    port: int = Field(default=5432, ge=1, le=65535, description="Server port.")
    user: str = Field(default="postgres", description="Role used for dumps and restores.")
    password_secret: str = Field(
        default="",
        description="Secret name under secretsDir holding key 'password'; '' = PGPASSWORD or none.",
    )
    databases: list[str] = Field(
        default_factory=lambda: ["configdb", "orchestratordb"], description="Databases to back up."
    )
    bin_dir: str = Field(
        default="", description="Directory of pg_dump/pg_restore; '' = search PATH."
    )
    sslmode: SslMode = Field(default="prefer", description="libpq sslmode for every connection.")
    connect_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="Timeout of each connection attempt."
    )
    exclude_tables: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per database, pg_dump table patterns whose rows are not backed up (their "
        "definitions are): {db: [pattern, ...]}.",
    )
    dump_compression: int = Field(
        default=6, ge=0, le=9, description="gzip level of pg_dump -Fc (-Z); 0 = none."
    )
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings,
        description="Dumps kept per database.",
    )
    maintenance_database: str = Field(
        default="postgres",
        description="Database the agent connects to for checks, renames and drops.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PostgresSettings:
        for name in self.databases:
            if not 0 < len(name.encode()) <= MAX_NAME_BYTES or "\x00" in name:
                raise ValueError(f"database name {name!r}: 1..{MAX_NAME_BYTES} bytes, no NUL")
        if len(set(self.databases)) != len(self.databases):
            raise ValueError("databases: each name may appear once")
        unknown = sorted(set(self.exclude_tables) - set(self.databases))
        if unknown:
            raise ValueError(f"excludeTables names databases not in `databases`: {unknown}")
        if self.maintenance_database in self.databases:
            raise ValueError(
                f"maintenanceDatabase {self.maintenance_database!r} cannot also be backed up "
                "and restored: restores swap databases by renaming them"
            )
        return self


def resolve_password(
    settings: PostgresSettings,
    secrets_dir: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
) -> SecretStr | None:
    """The password from ``<secretsDir>/<passwordSecret>/password``, else ``PGPASSWORD``.

    Called once at start-up (a small blocking read). A configured secret that cannot be read is
    ``Misconfigured``; no secret and no ``PGPASSWORD`` means no password (trust, peer or a
    ``.pgpass`` file of the client tools).
    """
    env = os.environ if environ is None else environ
    if settings.password_secret:
        if secrets_dir is None:
            raise Misconfigured("postgres.passwordSecret is set but secretsDir is not")
        path = Path(secrets_dir) / settings.password_secret / PASSWORD_KEY
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise Misconfigured(f"postgres password: cannot read {path}: {exc.strerror}") from exc
        password = text.rstrip("\r\n")
        if not password:
            raise Misconfigured(f"postgres password: {path} is empty")
        return SecretStr(password)
    if env.get("PGPASSWORD"):
        return SecretStr(env["PGPASSWORD"])
    return None
