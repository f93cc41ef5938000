"""Settings of the Pinot controller client and of segment backup (``az-service.config.pinot``)."""

from __future__ import annotations

from pydantic import Field

from az_agent.drivers.settings_base import SettingsModel


class PinotSettings(SettingsModel):
    controller_url: str = Field(
        "http://pinot-controller:9000", description="Base URL of the Pinot controller."
    )
    tables: list[str] = Field(
        default_factory=list, description="Raw table names to back up; empty means every table."
    )
