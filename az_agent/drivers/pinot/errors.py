"""How controller answers become our error types (one place, as for every driver).

::

    DriverError (az_agent.drivers.errors)
     +-- NotFound            404 (table, schema, segment), 410 (refresh of a missing segment)
     +-- PreconditionFailed  412 (If-Match CRC differs)
     |    +-- Conflict       409 (exists and may not be replaced, or another upload holds it)
     +-- PermissionDenied    403 (no access; also a table-name suffix that contradicts the type,
     |                       and segment validation failures, which Pinot reports as 403 too)
     +-- Misconfigured       401 (credentials refused), TLS failures, bad URL
     |    +-- RequestRejected  400 and any other 4xx: the request is wrong, retrying won't help
     +-- Unavailable         5xx, connection errors, timeouts, a body cut short

The controller's own message (``{"code": 404, "error": "..."}``) is kept in the exception text,
after the method and path, so logs say what Pinot said.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from az_agent.drivers.errors import (
    DriverError,
    Misconfigured,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)

_MAX_MESSAGE = 2000


class Conflict(PreconditionFailed):
    """409: the table, schema or segment exists and may not be replaced, or is being uploaded."""


class RequestRejected(Misconfigured):
    """400 (or another 4xx): the controller refused the request as invalid."""


def controller_message(body: bytes) -> str:
    """The ``error`` of a ``{"code","error"}`` body, else the body text (shortened)."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()[:_MAX_MESSAGE]
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])[:_MAX_MESSAGE]
    return text.strip()[:_MAX_MESSAGE]


def error_for_status(status: int, what: str, message: str) -> DriverError:
    """The typed error for a non-2xx answer to ``what`` (``"GET /tables/x"``)."""
    text = f"{what}: HTTP {status}: {message}"
    if status in (404, 410):
        return NotFound(text)
    if status == 409:
        return Conflict(text)
    if status == 412:
        return PreconditionFailed(text)
    if status == 401:
        return Misconfigured(f"{text} (check the Pinot credentials)")
    if status == 403:
        return PermissionDenied(text)
    if status >= 500 or status == 429:
        return Unavailable(text)
    return RequestRejected(text)


@contextmanager
def translate_transport_errors(what: str) -> Iterator[None]:
    """Map aiohttp/ssl/timeout failures raised inside the block to our types, chained."""
    try:
        yield
    except DriverError:
        raise
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
        raise Misconfigured(f"{what}: TLS failure: {exc}") from exc
    except ssl.SSLError as exc:
        raise Misconfigured(f"{what}: TLS failure: {exc}") from exc
    except aiohttp.InvalidURL as exc:
        raise Misconfigured(f"{what}: invalid controller URL: {exc}") from exc
    except TimeoutError as exc:
        raise Unavailable(f"{what}: timed out") from exc
    except aiohttp.ClientError as exc:
        raise Unavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise Unavailable(f"{what}: {exc}") from exc
