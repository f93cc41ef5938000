"""The controller's conventions every handler shares (§0 of the reference).

Error bodies are ``{"code": N, "error": "..."}``; JSON is compact except where Pinot
pretty-prints with Jackson; the type of a table comes only from its ``_OFFLINE``/``_REALTIME``
suffix; the ``type`` parameter is validated by ``Constants.validateTableType`` and tables are
resolved by ``getExistingTableNamesWithType``, quirks included.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

from aiohttp import web

from az_agent.emulators.pinot.state import TableRecord

log = logging.getLogger(__name__)

TYPES = ("OFFLINE", "REALTIME")


class PinotHttpError(Exception):
    """Raised by handlers; rendered as the controller's error JSON by the middleware."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


PAUSE_COMMENT = (
    "Pause flag is set. Consuming segments are being committed. Use /pauseStatus endpoint in a "
    "few moments to check if all consuming segments have been committed."
)
RESUME_COMMENT = (
    "Pause flag is cleared. Consuming segments are being created. Use /pauseStatus endpoint in a "
    "few moments to double check."
)


def pause_details(paused: bool, consuming: list[str], comment: str, stamp: str) -> dict[str, Any]:
    return {
        "pauseFlag": paused,
        "consumingSegments": consuming,
        "reasonCode": "ADMINISTRATIVE",
        "comment": comment,
        "timestamp": stamp,
    }


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, separators=(",", ":")),
        content_type="application/json",
    )


def error_response(status: int, message: str) -> web.Response:
    return json_response({"code": status, "error": message}, status)


def pretty_json(value: Any, level: int = 0) -> str:
    """Jackson's ``DefaultPrettyPrinter``: ``"k" : v``, 2-space objects, inline arrays."""
    pad = "  " * level
    if isinstance(value, dict):
        if not value:
            return "{ }"
        items = [
            f"{pad}  {json.dumps(str(k))} : {pretty_json(v, level + 1)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list):
        if not value:
            return "[ ]"
        return "[ " + ", ".join(pretty_json(v, level) for v in value) + " ]"
    return json.dumps(value)


def table_type_of(name: str) -> str | None:
    for kind in TYPES:
        if name.endswith(f"_{kind}"):
            return kind
    return None


def raw_name(name: str) -> str:
    kind = table_type_of(name)
    return name[: -len(kind) - 1] if kind else name


def with_type(name: str, kind: str) -> str:
    """``TableNameBuilder.tableNameWithType``: append the suffix unless it is already there."""
    return name if name.endswith(f"_{kind}") else f"{name}_{kind}"


def validate_table_type(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if value.upper() not in TYPES:
        raise PinotHttpError(400, f"Illegal table type '{value}'")
    return value.upper()


def existing_tables(tables: dict[str, TableRecord], name: str, kind: str | None) -> list[str]:
    """``getExistingTableNamesWithType``: 403 on a contradicting suffix, 404 when none exists."""
    suffix_kind = table_type_of(name)
    found: list[str] = []
    if suffix_kind is not None:
        if kind is not None and kind != suffix_kind:
            raise PinotHttpError(403, f"Table name: {name} does not match table type: {kind}")
        if name in tables:
            found.append(name)
    else:
        found = [f"{name}_{k}" for k in TYPES if kind in (None, k) and f"{name}_{k}" in tables]
    if not found:
        # Pinot appends "_<type>" even to an already typed name: 'x_OFFLINE_OFFLINE'.
        shown = f"{name}_{kind}" if kind is not None else name
        raise PinotHttpError(404, f"Table '{shown}' not found.")
    return found


def query_flag(request: web.Request, name: str, default: bool) -> bool:
    """A JAX-RS ``boolean`` query parameter: only ``true`` (any case) is true."""
    value = request.query.get(name)
    return default if value is None else value.lower() == "true"


class TaskOwner:
    """Owns the emulator's background tasks; :meth:`close` cancels and awaits all of them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        if self._closed:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pinot emulator task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        self._closed = True
        await cancel_all(list(self._tasks))


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
