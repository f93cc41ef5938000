"""Who may change the agent's state: a bearer token, or loopback clients when none is set.

The token comes from a mounted secret file (``http.tokenFile``) or the ``AZ_AGENT_TOKEN``
environment variable and is compared in constant time. Without a token, POSTs are accepted only
from loopback addresses: that is the ``kubectl port-forward`` of the reference docs, and the
agent says so at start-up. Requests relayed by the Kubernetes API server's service proxy lose
their ``Authorization`` header there, so the token is also accepted as ``X-Az-Agent-Token``.
GETs (status, probes, metrics) stay open.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from aiohttp import web

from az_agent.agent.http.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

TOKEN_ENV = "AZ_AGENT_TOKEN"
RELAY_HEADER = "X-Az-Agent-Token"


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Checks one request; raises ``Unauthorized`` / ``Forbidden`` instead of answering."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def describe(self) -> str:
        if self._token is not None:
            return "POST endpoints require a bearer token"
        return "no token configured: POST endpoints accept loopback clients only"

    def check(self, request: web.Request) -> None:
        if self._token is None:
            if not is_loopback(request.remote):
                raise Forbidden(
                    "no API token is configured, so changes are accepted only from loopback "
                    "clients (use kubectl port-forward, or configure http.tokenFile)"
                )
            return
        presented = _presented_token(request)
        if presented is None:
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(presented.encode(), self._token):
            raise Unauthorized("invalid bearer token")


def _presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    relayed = request.headers.get(RELAY_HEADER, "").strip()
    return relayed or None
