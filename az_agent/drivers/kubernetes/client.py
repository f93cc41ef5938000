"""Reaching the Kubernetes API with ``kubernetes_asyncio``; the one place its errors become ours.

Where the configuration comes from, in order: an explicit ``host`` (tests, or an operator who
wants it), the pod's service account when running in a cluster, else a kubeconfig file (the
``KUBECONFIG`` default when none is named). A refreshed kubeconfig token is never written back
to the user's file.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from az_agent.drivers.errors import (
    DriverError,
    Misconfigured,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)

USER_AGENT = "az-agent"
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class KubernetesConnection:
    """How to reach the API server; the defaults mean "in-cluster, else kubeconfig".

    ``ca_file`` and ``verify_ssl`` override what the chosen source says (``None``: keep it).
    """

    host: str = ""
    token: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    verify_ssl: bool | None = None
    kubeconfig: str | None = None
    context: str | None = None
    timeout: float = DEFAULT_TIMEOUT


def status_message(body: Any) -> str:
    """The ``message`` of a ``v1.Status`` error body, else the body as text."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(parsed, dict) and parsed.get("message"):
        return str(parsed["message"])
    return text.strip()


def error_for_status(status: int, body: Any, what: str) -> DriverError:
    """Our error for an API server answer; ``what`` names the operation for the message."""
    detail = f"{what}: Kubernetes API answered {status}: {status_message(body) or '(no message)'}"
    if status == 404:
        return NotFound(detail)
    if status == 403:
        return PermissionDenied(detail)
    if status == 409:
        return PreconditionFailed(detail)
    # 410: a list's continue token expired; listing again from the start succeeds.
    if status in (410, 429) or status >= 500:
        return Unavailable(detail)
    return Misconfigured(detail)


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn ``kubernetes_asyncio`` and aiohttp errors raised inside into ours, ``from`` them."""
    try:
        yield
    except ApiException as exc:
        raise error_for_status(exc.status or 0, exc.body, what) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise Unavailable(f"{what}: Kubernetes API unreachable: {reason}") from exc
    except ConfigException as exc:
        raise Misconfigured(f"{what}: {exc}") from exc


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _exists(path: str) -> bool:
    return Path(path).expanduser().exists()


async def _load_kubeconfig(connection: KubernetesConnection, configuration: Configuration) -> None:
    where = connection.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    if not await asyncio.to_thread(_exists, where.split(os.pathsep)[0]):
        raise Misconfigured(
            f"kubernetes configuration: not running in a cluster and no kubeconfig at {where}"
        )
    try:
        await kube_config.load_kube_config(
            config_file=connection.kubeconfig,
            context=connection.context,
            client_configuration=configuration,
            persist_config=False,
        )
    except (ConfigException, OSError, ValueError) as exc:
        raise Misconfigured(f"kubernetes configuration: kubeconfig {where}: {exc}") from exc


async def load_configuration(connection: KubernetesConnection) -> Configuration:
    """A client ``Configuration`` for ``connection``; ``Misconfigured`` when none can be made."""
    configuration = Configuration()
    with translate_errors("kubernetes configuration"):
        if connection.host:
            configuration.host = connection.host.rstrip("/")
            if connection.token:
                configuration.api_key["BearerToken"] = connection.token
                configuration.api_key_prefix["BearerToken"] = "Bearer"
        elif _in_cluster() and connection.kubeconfig is None:
            # Reads the mounted token and CA files: small, but still off the event loop.
            await asyncio.to_thread(
                kube_config.load_incluster_config, client_configuration=configuration
            )
        else:
            await _load_kubeconfig(connection, configuration)
    if connection.ca_file:
        configuration.ssl_ca_cert = connection.ca_file
    if connection.verify_ssl is not None:
        configuration.verify_ssl = connection.verify_ssl
    return configuration


async def open_api_client(connection: KubernetesConnection) -> ApiClient:
    """An ``ApiClient`` for ``connection``; the caller owns it and must ``close()`` it."""
    client = ApiClient(await load_configuration(connection))
    client.user_agent = USER_AGENT
    return client
