"""Silences through the Alertmanager v2 API, with aiohttp.

Choices that are not obvious from the API:

* Expiring is idempotent. Alertmanager 0.25 answers ``DELETE`` of an unknown id with a 500
  ("silence not found") and newer versions with 404; a 5xx is therefore confirmed with a ``GET``
  (404 or ``expired`` means done) instead of trusting the error text.
* Validation errors come back as 400 with a bare JSON string or 422 with ``{"message": ...}``;
  both become ``Misconfigured`` carrying Alertmanager's own words.
* Nothing is retried here: a silence ``POST`` is not idempotent (a retry after a lost answer
  creates a second silence), so the caller decides, knowing what it has persisted.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from az_agent.drivers.alerts.base import Matcher, Silence, SilenceManager, SilenceState
from az_agent.drivers.alerts.matchers import EVERY_ALERT
from az_agent.drivers.errors import (
    DriverError,
    Misconfigured,
    NotFound,
    PermissionDenied,
    Unavailable,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_CREATOR = "az-agent"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, the form Alertmanager itself returns."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _display(url: str) -> str:
    """The URL without credentials or query, fit for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _message(body: bytes) -> str:
    """Alertmanager's explanation: a JSON string (400), ``{"message"}`` (422) or plain text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if isinstance(parsed, dict) and "message" in parsed:
        return str(parsed["message"])
    return parsed if isinstance(parsed, str) else text


def _error(status: int, body: bytes, what: str) -> DriverError:
    """The one place HTTP answers of Alertmanager become our error types."""
    detail = f"{what}: Alertmanager answered {status}: {_message(body) or '(no message)'}"
    if status == 404:
        return NotFound(detail)
    if status == 403:
        return PermissionDenied(detail)
    if status == 429 or status >= 500:
        return Unavailable(detail)
    return Misconfigured(detail)


def _auth_headers(bearer_token: str | None, basic_auth: tuple[str, str] | None) -> dict[str, str]:
    if bearer_token:
        return {"Authorization": f"Bearer {bearer_token}"}
    if basic_auth:
        user, password = basic_auth
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {encoded}"}
    return {}


def _parse_silence(raw: dict[str, Any]) -> Silence:
    return Silence(
        id=str(raw["id"]),
        state=SilenceState(raw["status"]["state"]),
        matchers=tuple(Matcher.from_api(m) for m in raw["matchers"]),
        starts_at=datetime.fromisoformat(raw["startsAt"]),
        ends_at=datetime.fromisoformat(raw["endsAt"]),
        created_by=str(raw["createdBy"]),
        comment=str(raw["comment"]),
    )


class AlertmanagerSilences(SilenceManager):
    """Silences on the Alertmanager at ``url`` (its base URL, route prefix included).

    ``matchers`` and ``created_by`` are the defaults of :meth:`silence`; no matchers means
    every alert of this Alertmanager (:data:`EVERY_ALERT`). At most one of
    ``bearer_token`` (for an auth proxy in front) and ``basic_auth`` (Alertmanager's own
    ``--web.config.file``) may be given; ``timeout`` bounds each request as a whole.
    """

    def __init__(
        self,
        url: str,
        *,
        matchers: Sequence[Matcher] = (),
        created_by: str = DEFAULT_CREATOR,
        timeout: float = DEFAULT_TIMEOUT,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise Misconfigured(f"alertmanager url {_display(url)!r}: expected http(s)://host")
        if bearer_token is not None and basic_auth is not None:
            raise Misconfigured("alertmanager: give a bearer token or basic auth, not both")
        self._base = url.rstrip("/")
        self._where = _display(self._base)
        self._matchers = tuple(matchers) or (EVERY_ALERT,)
        self._created_by = created_by
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = _auth_headers(bearer_token, basic_auth)
        self._clock = clock
        self._client: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AlertmanagerSilences({self._where!r})"

    def _session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop, as aiohttp requires.
        if self._closed:
            raise RuntimeError("AlertmanagerSilences is closed")
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._client

    async def _send(self, method: str, path: str, payload: Any = None) -> tuple[int, bytes]:
        """Status and body of one request; connection failures and timeouts are ``Unavailable``."""
        try:
            async with self._session().request(method, self._base + path, json=payload) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise Unavailable(f"Alertmanager at {self._where}: {reason}") from exc

    async def silence(
        self,
        *,
        comment: str,
        duration: timedelta,
        matchers: Sequence[Matcher] | None = None,
        created_by: str | None = None,
    ) -> str | None:
        chosen = self._matchers if matchers is None else tuple(matchers)
        if not chosen:
            raise ValueError("a silence needs at least one matcher (alertmanager.matchers)")
        if duration <= timedelta(0):
            raise ValueError(f"silence duration must be positive, got {duration}")
        if not comment:
            raise ValueError("a silence needs a comment naming the operation")
        now = self._clock()
        payload = {
            "matchers": [m.to_api() for m in chosen],
            "startsAt": format_time(now),
            "endsAt": format_time(now + duration),
            "createdBy": created_by or self._created_by,
            "comment": comment,
        }
        status, body = await self._send("POST", "/api/v2/silences", payload)
        if status >= 300:
            raise _error(status, body, f"create silence at {self._where}")
        answer = self._answer(body, "create silence")
        if not answer.get("silenceID"):
            raise Misconfigured(f"create silence: no silenceID in the answer of {self._where}")
        silence_id = str(answer["silenceID"])
        log.info(
            "silenced alerts until %s: silence %s (%s)", payload["endsAt"], silence_id, comment
        )
        return silence_id

    def _answer(self, body: bytes, what: str) -> dict[str, Any]:
        """The JSON of a 2xx answer; anything else means the URL is not an Alertmanager."""
        try:
            answer = json.loads(body)
            if isinstance(answer, dict) and answer:
                return answer
        except ValueError as exc:
            raise Misconfigured(f"{what}: {self._where} did not answer JSON") from exc
        raise Misconfigured(f"{what}: unexpected answer from {self._where}: {body[:200]!r}")

    async def expire(self, silence_id: str) -> None:
        path = f"/api/v2/silence/{quote(silence_id, safe='')}"
        status, body = await self._send("DELETE", path)
        if status < 300 or status == 404:
            log.info("expired silence %s", silence_id)
            return
        if status >= 500 and await self._is_gone(silence_id):
            log.info("silence %s was already gone or expired", silence_id)
            return
        raise _error(status, body, f"expire silence {silence_id} at {self._where}")

    async def _is_gone(self, silence_id: str) -> bool:
        try:
            return (await self.get(silence_id)).state is SilenceState.EXPIRED
        except NotFound:
            return True

    async def get(self, silence_id: str) -> Silence:
        path = f"/api/v2/silence/{quote(silence_id, safe='')}"
        status, body = await self._send("GET", path)
        if status >= 300:
            raise _error(status, body, f"silence {silence_id} at {self._where}")
        answer = self._answer(body, f"silence {silence_id}")
        try:
            return _parse_silence(answer)
        except (KeyError, TypeError, ValueError) as exc:
            raise Misconfigured(
                f"silence {silence_id}: unexpected answer from {self._where}"
            ) from exc

    async def find(self, *, comment_contains: str) -> list[Silence]:
        if not comment_contains:
            raise ValueError("find needs a text to look for")
        status, body = await self._send("GET", "/api/v2/silences")
        if status >= 300:
            raise _error(status, body, f"list silences at {self._where}")
        try:
            listed = json.loads(body)
            silences = [_parse_silence(raw) for raw in listed]
        except (KeyError, TypeError, ValueError) as exc:
            raise Misconfigured(f"list silences: unexpected answer from {self._where}") from exc
        return [s for s in silences if comment_contains in s.comment]

    async def close(self) -> None:
        self._closed = True
        if self._client is not None:
            await self._client.close()
            self._client = None
