"""Settings of the Pinot controller client and of segment backup (``az-service.config.pinot``)."""

from __future__ import annotations

from pydantic import Field

from az_agent.drivers.settings_base import SettingsModel


class PinotSettings(SettingsModel):
    controller_url: str = Field(
        default="http://pinot-controller:9000", description="Base URL of the Pinot controller."
    )
    tables: list[str] = Field(
        default_factory=list, description="Raw table names to back up; empty means every table."
    )
    auth_secret: str = Field(
        default="",
        description="Secret name under secretsDir holding 'username' and 'password' (Basic "
        "auth) or 'token' (Bearer, or a full 'Basic ...' header value); '' = no auth.",
    )
    tls_verify: bool = Field(default=True, description="Verify the controller's TLS certificate.")
    ca_file: str = Field(
        default="",
        description="PEM file of the CA that signed the controller's certificate; '' = system.",
    )
    timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Timeout of each controller call; for segment downloads and uploads, the "
        "longest wait for the next bytes (the whole transfer may take longer; an upload waits "
        "up to ten times this for the answer, while the controller untars the segment).",
    )
    concurrency: int = Field(
        default=4, ge=1, le=256, description="Segments copied at the same time by the backup loop."
    )
    poll_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the backup loop asks the controller for new segments.",
    )
    refresh_scan_interval_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often the backup loop reads the metadata of every segment (one "
        "request per table) to find refreshed ones (same name, new CRC); the polls between "
        "list the names and read the metadata of new names only. A leader's first poll and a "
        "pause's flush always read everything.",
    )
