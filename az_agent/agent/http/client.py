"""A client of the agent's HTTP API, for the terminal handshake and the drill.

It speaks the contract of :mod:`az_agent.agent.http.app` from the other side: POSTs carry the
bearer token when one is given, every answer is JSON, and an error answer (4xx/5xx) becomes
:class:`AgentRefused` holding the server's body, so callers print the server's own words.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

from az_agent.agent.http.auth import TOKEN_ENV

Body = dict[str, Any]


class AgentRefused(Exception):
    """The agent answered 4xx or 5xx; ``body`` is its JSON error (``error``, ``detail``...)."""

    def __init__(self, status: int, body: Body) -> None:
        self.status = status
        self.body = body
        super().__init__(self.line())

    def line(self) -> str:
        """One line for a terminal: status, the stable code and the server's sentence."""
        code = self.body.get("error", "error")
        detail = self.body.get("detail") or json.dumps(self.body, sort_keys=True)
        return f"{self.status} {code}: {detail}"


class AgentUnreachable(Exception):
    """No HTTP answer at all: connection refused, timeout, not JSON."""


def read_token(token_file: str | None, environ: dict[str, str]) -> str | None:
    """The API token from ``token_file`` (stripped, as the agent reads its own), else from
    ``AZ_AGENT_TOKEN``; ``None`` for a loopback agent without one. ``OSError`` or ``ValueError``
    when the file cannot serve."""
    if token_file:
        token = Path(token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    return environ.get(TOKEN_ENV) or None


class AgentClient:
    """``async with AgentClient(url, token) as agent: await agent.status()``."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 330.0) -> None:
        # The default outlasts /pause's default wait (300 s) before it answers 202.
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self, method: str, path: str, params: dict[str, str] | None = None
    ) -> tuple[int, Body]:
        """The status and JSON body of a 2xx answer; :class:`AgentRefused` otherwise."""
        assert self._session is not None, "use AgentClient in 'async with'"
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            async with self._session.request(
                method, self.url + path, params=params or {}, headers=headers
            ) as answer:
                text = await answer.text()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise AgentUnreachable(f"{method} {self.url}{path}: {reason}") from None
        try:
            body = json.loads(text)
        except ValueError:
            raise AgentUnreachable(
                f"{method} {self.url}{path}: HTTP {status}, not JSON: {text[:200]!r}"
            ) from None
        if not isinstance(body, dict):
            raise AgentUnreachable(f"{method} {self.url}{path}: HTTP {status}, not an object")
        if status >= 400:
            raise AgentRefused(status, body)
        return status, body

    async def status(self) -> Body:
        return (await self.call("GET", "/status"))[1]

    async def pause(self, *, force: bool = False, wait: int | None = None) -> tuple[int, Body]:
        params = {"force": "true"} if force else {}
        if wait is not None:
            params["wait"] = str(wait)
        return await self.call("POST", "/pause", params)

    async def activate(self, zone: str, **options: str | int | bool | None) -> tuple[int, Body]:
        """``options`` by their query names (``latestTime``, ``force``, ``dryRun``...);
        ``None`` and ``False`` are left out."""
        params = {"zone": zone}
        for name, value in options.items():
            if value is None or value is False:
                continue
            params[name] = "true" if value is True else str(value)
        return await self.call("POST", "/activate", params)

    async def resume(self) -> tuple[int, Body]:
        return await self.call("POST", "/resume")


__all__ = ["AgentClient", "AgentRefused", "AgentUnreachable", "Body", "read_token"]
