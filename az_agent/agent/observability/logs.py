"""Structured logs: one JSON object per line, with the zone, holder and operation id attached.

Context is carried in ``contextvars`` so every log line written inside an operation's task
carries its id without passing loggers around. The agent binds its zone and holder id at the
start of ``serve`` and ``Agent.run``, so every task they start (loops, operations, the HTTP
server's connections) inherits them, and two agents in one process (tests) stay apart.
Messages use ``%``-style arguments; secrets and credential-bearing URLs are never logged.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

_CONTEXT: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("az_log_context")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach ``fields`` (e.g. ``operation="op-1"``) to every record logged inside the block."""
    merged = {**_CONTEXT.get({}), **fields}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind_context(**fields: Any) -> None:
    """Attach ``fields`` for the rest of the current task (e.g. the zone at start-up)."""
    _CONTEXT.set({**_CONTEXT.get({}), **fields})


class ContextFilter(logging.Filter):
    """Copies the current context onto each record as ``record.context``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = _CONTEXT.get({})
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...context, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "context", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def json_handler(stream: TextIO) -> logging.Handler:
    """A handler writing one JSON object per record to ``stream``, with the context."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(level: str = "INFO") -> None:
    """Send JSON lines to stderr; quiet the chatty HTTP client libraries."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler(sys.stderr)]
    root.setLevel(level)
    for noisy in ("aiobotocore", "botocore", "azure", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
