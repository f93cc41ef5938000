"""The base of every settings model: frozen, strict, camelCase keys like the Helm values."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SettingsModel(BaseModel):
    """Frozen, unknown keys refused, camelCase aliases (snake_case accepted in code)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )
