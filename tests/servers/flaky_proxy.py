"""A reverse proxy that answers a share of requests with the backend's throttling error.

Put in front of a storage emulator, it proves the drivers' retries: a throttled request never
reaches the server (as with real throttling), so a correct client loses and duplicates nothing.
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}

THROTTLE_BODIES: Mapping[str, tuple[str, bytes]] = {
    "s3": (
        "application/xml",
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
        b"<Message>Please reduce your request rate.</Message></Error>",
    ),
    "gcs": (
        "application/json",
        b'{"error":{"code":503,"message":"Backend Error","errors":[{"reason":"backendError"}]}}',
    ),
    "azure": (
        "application/xml",
        b"<?xml version='1.0' encoding='utf-8'?><Error><Code>ServerBusy</Code>"
        b"<Message>The server is busy.</Message></Error>",
    ),
}


@dataclass
class FlakyProxy:
    """Forward to ``upstream``; fail ``failure_rate`` of requests with 503 before forwarding."""

    upstream: str
    kind: str
    failure_rate: float = 0.2
    seed: int = 1234
    injected: int = 0
    forwarded: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._client = aiohttp.ClientSession(auto_decompress=False)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self._rng.random() < self.failure_rate:
            self.injected += 1
            content_type, payload = THROTTLE_BODIES[self.kind]
            return web.Response(
                status=503, body=payload, headers={"Content-Type": content_type, "Retry-After": "0"}
            )
        self.forwarded += 1
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        url = self.upstream + request.rel_url.raw_path_qs
        # No body must stay no body: aiohttp would add a Content-Type that Azure signs. A large
        # body goes as a file object, as aiohttp warns about raw bytes over 1 MiB.
        data = io.BytesIO(body) if body else None
        async with self._client.request(
            request.method, url, headers=headers, data=data, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    response.headers.add(name, value.replace(self.upstream, self.url))
            if "Content-Length" in upstream.headers:
                response.content_length = int(upstream.headers["Content-Length"])
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
            return response


class Brownout(FlakyProxy):
    """Forwards everything, but answers every request with the backend's 503 while dark: a
    bucket brownout the tests switch on and off."""

    def __init__(self, upstream: str, kind: str = "s3") -> None:
        super().__init__(upstream, kind, failure_rate=0.0)

    def dark(self, on: bool) -> None:
        self.failure_rate = 1.0 if on else 0.0
