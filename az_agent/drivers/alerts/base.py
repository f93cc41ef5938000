"""Silencing alerts while a zone is paused, rehydrated or handed over.

A failover makes a healthy cluster look broken for a while (consumption paused, tables empty
until rehydrated), so the agent silences its zone's alerts around each operation and lifts the
silences on ``/resume``. Every silence carries an end time: one the agent forgets (crash, lost
state, an operator who never calls ``/resume``) still expires by itself.

:class:`SilenceManager` is the interface; :class:`NoSilences` stands for "no Alertmanager
configured" so the agent never has to test for ``None`` and status can say silencing is off.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from az_agent.drivers.errors import NotFound
from az_agent.drivers.resource import AsyncResource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher of a silence; both flags are always sent (Alertmanager requires them)."""

    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def to_api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "isRegex": self.is_regex,
            "isEqual": self.is_equal,
        }

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Matcher:
        """Read a matcher in the API's camelCase shape (also the shape of our YAML config)."""
        return cls(
            name=str(raw["name"]),
            value=str(raw["value"]),
            is_regex=bool(raw.get("isRegex", False)),
            is_equal=bool(raw.get("isEqual", True)),
        )


class SilenceState(enum.StrEnum):
    """Alertmanager's silence states."""

    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Silence:
    """A silence as the backend reports it."""

    id: str
    state: SilenceState
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str


class SilenceManager(AsyncResource):
    """Creates and expires silences; usable as an async context manager that closes it.

    Contract shared by every method: errors are those of :mod:`az_agent.drivers.errors`
    (``Unavailable`` for connection failures, timeouts and 5xx, safe to retry; ``Misconfigured``
    for a request the backend rejects, carrying its message; ``PermissionDenied`` for 403).
    Nothing is retried inside the driver: the caller owns the retry policy.
    """

    enabled: bool = True
    """False when silencing is switched off, so status can say alerts are not silenced."""

    @abc.abstractmethod
    async def silence(
        self,
        *,
        comment: str,
        duration: timedelta,
        matchers: Sequence[Matcher] | None = None,
        created_by: str | None = None,
    ) -> str | None:
        """Create a silence starting now and ending after ``duration``; return its id.

        ``matchers`` default to the configured ones (every alert when none is configured),
        ``created_by`` to the configured creator.
        ``comment`` should name the operation so an operator knows who to ask. Not idempotent:
        each call creates a new silence, so the caller persists the id before acting on it.
        Returns ``None`` only when silencing is disabled (nothing was created). Raises
        ``ValueError`` for a non-positive duration, an empty comment or an empty ``matchers``.
        """

    @abc.abstractmethod
    async def expire(self, silence_id: str) -> None:
        """End the silence now. Idempotent: an unknown or already expired id is not an error."""

    @abc.abstractmethod
    async def get(self, silence_id: str) -> Silence:
        """The silence as stored by the backend; ``NotFound`` when the backend has no such id."""

    @abc.abstractmethod
    async def find(self, *, comment_contains: str) -> list[Silence]:
        """Every silence the backend holds (any state) whose comment contains the text.

        For a caller that recorded a tag it put in the comment before creating a silence and
        crashed before it learnt the id: the tag finds it again. Raises ``ValueError`` for an
        empty text (that would be every silence).
        """

    async def is_active(self, silence_id: str) -> bool:
        """True while the silence mutes alerts: not pending, not expired, not unknown."""
        try:
            return (await self.get(silence_id)).state is SilenceState.ACTIVE
        except NotFound:
            return False

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent; the manager must not be used afterwards."""


class NoSilences(SilenceManager):
    """No Alertmanager configured: nothing is silenced, and ``enabled`` says so."""

    enabled = False

    async def silence(
        self,
        *,
        comment: str,
        duration: timedelta,
        matchers: Sequence[Matcher] | None = None,
        created_by: str | None = None,
    ) -> str | None:
        log.info("alert silencing is disabled (no Alertmanager configured): %s", comment)
        return None

    async def expire(self, silence_id: str) -> None:
        # An id recorded while Alertmanager was configured ends by itself at its endsAt.
        log.info("alert silencing is disabled; silence %s is left to expire by itself", silence_id)

    async def get(self, silence_id: str) -> Silence:
        raise NotFound(f"silence {silence_id}: silencing is disabled")

    async def find(self, *, comment_contains: str) -> list[Silence]:
        if not comment_contains:
            raise ValueError("find needs a text to look for")
        return []

    async def close(self) -> None:
        return None
