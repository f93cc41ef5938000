"""The HTTP server: aiohttp's, with its parse errors answered in our JSON error shape.

A request aiohttp cannot parse (a request line or header longer than ``max_line_size`` /
``max_field_size``, a malformed request line) never reaches the app's middlewares: aiohttp's
``RequestHandler.handle_error`` answers it with a text body and logs a traceback. The handler
class here answers ``{"error", "detail", "requestId"}`` instead (431 for a line too long, 400
for anything else unparseable), logs one line without the request's bytes (they may hold a
credential), and closes the connection as aiohttp does.

aiohttp builds its ``RequestHandler`` in ``Server.__call__`` and its ``Server`` in
``AppRunner._make_server``; both are overridden here, the only place that knows about them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

MAX_LINE_SIZE = 8190
"""Longest request line and header field accepted, in bytes (aiohttp's default, stated)."""


def parse_error_body(status: int, exc: BaseException | None) -> tuple[int, dict[str, str]]:
    """The status and JSON body for a request aiohttp could not parse."""
    request_id = uuid.uuid4().hex[:16]
    if isinstance(exc, LineTooLong):
        detail = f"the request line or a header field is longer than {MAX_LINE_SIZE} bytes"
        return 431, {"error": "request-too-large", "detail": detail, "requestId": request_id}
    if status >= 500:
        detail = "internal error; see the agent's log"
        return 500, {"error": "internal", "detail": detail, "requestId": request_id}
    detail = f"malformed HTTP request ({type(exc).__name__ if exc else 'unparseable'})"
    return 400, {"error": "bad-request", "detail": detail, "requestId": request_id}


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering unparseable requests as JSON."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        del message  # aiohttp's text: it quotes the offending bytes
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.info(
                "refused an unparseable request from %s: %s", request.remote, type(exc).__name__
            )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        status, body = parse_error_body(status, exc)
        response = web.Response(
            status=status, text=json.dumps(body), content_type="application/json"
        )
        response.headers["X-Request-Id"] = body["requestId"]
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """A ``web.Server`` whose connections are :class:`JsonErrorRequestHandler`."""

    def __init__(self, plain: web.Server, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=loop,
            **kwargs,
        )
        self._handler_kwargs = kwargs
        self._handler_loop = loop

    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._handler_loop, **self._handler_kwargs)


class ApiRunner(web.AppRunner):
    """``web.AppRunner`` serving through :class:`JsonErrorServer`, with stated line limits."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_line_size", MAX_LINE_SIZE)
        kwargs.setdefault("max_field_size", MAX_LINE_SIZE)
        super().__init__(app, **kwargs)
        self._handler_args = dict(kwargs)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        kwargs = {"access_log_class": AccessLogger, **self._handler_args}
        return JsonErrorServer(plain, asyncio.get_running_loop(), **kwargs)


__all__ = ["MAX_LINE_SIZE", "ApiRunner", "JsonErrorServer", "parse_error_body"]
