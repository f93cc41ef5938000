"""Settings of the PostgreSQL dumps and restores (``az-service.config.postgres``)."""

from __future__ import annotations

from pydantic import Field

from az_agent.drivers.settings_base import SettingsModel


class PostgresSettings(SettingsModel):
    host: str = Field("kfuse-postgresql", description="Server host name or socket directory.")
    port: int = Field(5432, ge=1, le=65535, description="Server port.")
    user: str = Field("postgres", description="Role used for dumps and restores.")
    password_secret: str = Field(
        "", description="Secret name under secretsDir holding key 'password'; '' = no password."
    )
    databases: list[str] = Field(
        default_factory=lambda: ["configdb", "orchestratordb"], description="Databases to back up."
    )
    bin_dir: str = Field("", description="Directory of pg_dump/pg_restore; '' = search PATH.")
