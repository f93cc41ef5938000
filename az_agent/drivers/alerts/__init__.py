"""Alert silencing during failover: the ``SilenceManager`` interface and its implementations."""

from __future__ import annotations

from collections.abc import Sequence

from az_agent.drivers.alerts.base import (
    Matcher,
    NoSilences,
    Silence,
    SilenceManager,
    SilenceState,
)

__all__ = [
    "Matcher",
    "NoSilences",
    "Silence",
    "SilenceManager",
    "SilenceState",
    "open_silence_manager",
]


def open_silence_manager(
    url: str,
    *,
    matchers: Sequence[Matcher] = (),
    created_by: str = "az-agent",
    timeout: float = 10.0,
    bearer_token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> SilenceManager:
    """Alertmanager silences at ``url``, or :class:`NoSilences` when ``url`` is empty."""
    if not url:
        return NoSilences()
    from az_agent.drivers.alerts.alertmanager import AlertmanagerSilences

    return AlertmanagerSilences(
        url,
        matchers=matchers,
        created_by=created_by,
        timeout=timeout,
        bearer_token=bearer_token,
        basic_auth=basic_auth,
    )
