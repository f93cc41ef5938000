"""Calling a Service in another namespace through the API server's service proxy.

``/activate?namespace=<ns>`` pauses the source zone's agent "through the Kubernetes API": a
``POST`` to ``/api/v1/namespaces/<ns>/services/<name>:<port>/proxy/pause``. That needs only RBAC
on ``services/proxy`` and no network path between the zones' pods.

Two things the proxy does that shape this client:

* The API server answers for itself (service missing, no ready endpoint, dial failure, RBAC) with
  a ``v1.Status`` body; those become our errors. Any other answer is the service's own and is
  returned as a :class:`ServiceReply` whatever its status (a 409 from the agent is information).
* The API server removes ``Authorization`` once it has authenticated the caller, so the target
  never sees it. A token for the target agent travels in :data:`AGENT_TOKEN_HEADER` instead.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote

from kubernetes_asyncio.client import ApiClient

from az_agent.drivers.kubernetes.client import (
    DEFAULT_TIMEOUT,
    KubernetesConnection,
    error_for_status,
    open_api_client,
    translate_errors,
)

log = logging.getLogger(__name__)

AGENT_TOKEN_HEADER = "X-Az-Agent-Token"
DEFAULT_SERVICE = "az-service"
DEFAULT_PORT = 8080
PING_TIMEOUT = 5.0

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class ServiceReply:
    """The target service's own answer: status and body (parsed JSON when it is JSON)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _check_label(kind: str, value: str) -> None:
    if not _DNS_LABEL.match(value):
        raise ValueError(f"{kind} {value!r}: not a valid Kubernetes name (RFC 1123 label)")


def _parse(raw: bytes, content_type: str) -> Any:
    text = raw.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _is_api_status(body: Any) -> bool:
    return isinstance(body, dict) and body.get("kind") == "Status" and "code" in body


class KubernetesServiceProxy:
    """Requests to Services through the API server; owns (and closes) ``api_client``."""

    def __init__(self, api_client: ApiClient, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._client = api_client
        self._timeout = timeout
        self._closed = False

    @classmethod
    async def connect(cls, connection: KubernetesConnection) -> Self:
        return cls(await open_api_client(connection), timeout=connection.timeout)

    async def request(
        self,
        method: str,
        namespace: str,
        service: str,
        port: int | str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        payload: Any = None,
        headers: Mapping[str, str] | None = None,
        request_timeout: float | None = None,
    ) -> ServiceReply:
        """Send one request to ``service``:``port`` in ``namespace``; see the module docstring.

        Raises our errors for the API server's own refusals (``NotFound``: no such service;
        ``Unavailable``: no ready endpoint, dial failure, API server unreachable or timed out;
        ``PermissionDenied``: RBAC). ``request_timeout`` overrides the connection's for slow calls.
        """
        if self._closed:
            raise RuntimeError("KubernetesServiceProxy is closed")
        _check_label("namespace", namespace)
        _check_label("service", service)
        resource = (
            f"/api/v1/namespaces/{namespace}/services/{service}:{quote(str(port), safe='')}"
            f"/proxy/{quote(path.lstrip('/'), safe='/')}"
        )
        what = f"{method} {path} on service {namespace}/{service}:{port}"
        sent = {"Accept": "application/json", "Content-Type": "application/json"}
        sent.update(headers or {})
        with translate_errors(what):
            response = await self._client.call_api(
                resource,
                method.upper(),
                query_params=list((params or {}).items()),
                header_params=sent,
                body=payload,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=request_timeout or self._timeout,
            )
            try:
                raw = await response.read()
            finally:
                response.release()
        body = _parse(raw, response.headers.get("Content-Type", ""))
        if response.status >= 300 and _is_api_status(body):
            raise error_for_status(response.status, raw, what)
        return ServiceReply(response.status, body)

    async def pause_agent(
        self,
        namespace: str,
        *,
        force: bool = False,
        service: str = DEFAULT_SERVICE,
        port: int | str = DEFAULT_PORT,
        agent_token: str | None = None,
        wait_seconds: int | None = None,
        request_timeout: float | None = None,
    ) -> ServiceReply:
        """``POST /pause[?force=true][&wait=N]`` on the az-agent of ``namespace``; its reply as is.

        The agent answers 200 once paused, or 202 when still pausing after ``wait_seconds``
        (its own default otherwise). ``request_timeout`` should cover that wait: the API server
        does not time out proxied requests itself.
        """
        headers = {AGENT_TOKEN_HEADER: agent_token} if agent_token else {}
        params = {"force": "true"} if force else {}
        if wait_seconds is not None:
            params["wait"] = str(wait_seconds)
        reply = await self.request(
            "POST",
            namespace,
            service,
            port,
            "pause",
            params=params,
            headers=headers,
            request_timeout=request_timeout,
        )
        log.info("pause of the agent in %s answered %d", namespace, reply.status)
        return reply

    async def ping(self) -> None:
        """One round trip to the API server (``GET /version``); ``Unavailable`` when it does
        not answer, our other errors for its refusals."""
        if self._closed:
            raise RuntimeError("KubernetesServiceProxy is closed")
        with translate_errors("GET /version"):
            response = await self._client.call_api(
                "/version",
                "GET",
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=min(self._timeout, PING_TIMEOUT),
            )
            try:
                raw = await response.read()
            finally:
                response.release()
        if response.status >= 300:
            raise error_for_status(response.status, raw, "GET /version")

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
