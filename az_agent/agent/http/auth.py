"""Who may change the agent's state: a bearer token, or loopback clients when none is set.

The token comes from a mounted secret file (``http.tokenFile``) or the ``AZ_AGENT_TOKEN``
environment variable and is compared in constant time. Without a token, POSTs are accepted only
from loopback addresses: that is the ``kubectl port-forward`` of the reference docs, and the
agent says so at start-up; ``http.trustLoopback: false`` turns that off too (a pod whose
sidecars make every client look local), and then every POST is refused. Requests relayed by the
Kubernetes API server's service proxy lose their ``Authorization`` header there, so the token is
also accepted as ``X-Az-Agent-Token``. Malformed credentials (not UTF-8, over
:data:`MAX_CREDENTIAL_LENGTH`) are refused with 401 like wrong ones. GETs (status, probes,
metrics) stay open.
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
MAX_CREDENTIAL_LENGTH = 1024
"""Longer credentials are refused unread: our tokens are a few dozen characters."""


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Checks one request; raises ``Unauthorized`` / ``Forbidden`` instead of answering."""

    def __init__(self, token: str | None, *, trust_loopback: bool = True) -> None:
        self._token = token.encode() if token else None
        self._trust_loopback = trust_loopback

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def describe(self) -> str:
        if self._token is not None:
            return "POST endpoints require a bearer token"
        if not self._trust_loopback:
            return "no token configured and trustLoopback is off: every POST is refused"
        return "no token configured: POST endpoints accept loopback clients only"

    def check(self, request: web.Request) -> None:
        if self._token is None:
            if not self._trust_loopback:
                raise Forbidden(
                    "no API token is configured and http.trustLoopback is false, so no client "
                    "may change the agent's state (configure http.tokenFile)"
                )
            if not is_loopback(request.remote):
                raise Forbidden(
                    "no API token is configured, so changes are accepted only from loopback "
                    "clients (use kubectl port-forward, or configure http.tokenFile)"
                )
            return
        presented = _presented_token(request)
        if presented is None:
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(presented, self._token):
            raise Unauthorized("invalid bearer token")


def _presented_token(request: web.Request) -> bytes | None:
    """The token as bytes; ``Unauthorized`` when it is too long or not UTF-8 (aiohttp keeps
    undecodable header bytes as surrogates, which cannot be encoded back)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if not (scheme.lower() == "bearer" and value.strip()):
        value = request.headers.get(RELAY_HEADER, "")
    token = value.strip()
    if not token:
        return None
    if len(token) > MAX_CREDENTIAL_LENGTH:
        raise Unauthorized(
            f"malformed bearer token: longer than {MAX_CREDENTIAL_LENGTH} characters"
        )
    try:
        return token.encode()
    except UnicodeEncodeError:
        raise Unauthorized("malformed bearer token: not valid UTF-8") from None
