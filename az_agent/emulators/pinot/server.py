"""The emulator as an aiohttp server that tests start in-process and the CLI runs for good.

``async with PinotEmulator(data_dir, port=0) as emulator: emulator.url`` starts it on a free
port; leaving the block cancels and awaits every background task (commits, generators, resume
repairs), then stops the server. State persists in ``data_dir`` across restarts.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from az_agent.emulators.pinot import (
    admin,
    instance_routes,
    realtime_routes,
    segment_routes,
    tables,
    upload,
)
from az_agent.emulators.pinot.cluster import Cluster, EmulatorOptions
from az_agent.emulators.pinot.common import (
    PinotHttpError,
    TaskOwner,
    cancel_all,
    error_response,
)
from az_agent.emulators.pinot.keys import CLUSTER
from az_agent.emulators.pinot.seed import SeedTable, seed_table
from az_agent.emulators.pinot.state import GeneratorSpec, Store

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_UNAUTHENTICATED = ("/health", "/_emulator/")


@dataclass(frozen=True, slots=True)
class EmulatorAuth:
    """Credentials the emulator demands (any one accepted); ``None`` fields are not offered."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def accepted(self) -> set[str]:
        values = set()
        if self.username is not None and self.password is not None:
            pair = f"{self.username}:{self.password}".encode()
            values.add("Basic " + base64.b64encode(pair).decode("ascii"))
        if self.token is not None:
            values.add(f"Bearer {self.token}")
        return values


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the controller's ``{"code","error"}`` body (§0)."""
    try:
        return await handler(request)
    except PinotHttpError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException:
        raise
    except ConnectionResetError:
        # The client went away mid-request: nobody will read an answer; not a failure.
        log.info("pinot emulator: %s %s: client disconnected", request.method, request.path)
        return error_response(400, "client disconnected")
    except Exception as exc:
        log.exception("pinot emulator: %s %s failed", request.method, request.path)
        return error_response(500, str(exc) or type(exc).__name__)


@web.middleware
async def _faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    for fault in request.app[admin.FAULTS]:
        if fault.matches(request):
            fault.times -= 1
            await asyncio.sleep(fault.delay)
            if fault.status:
                return error_response(fault.status, fault.message)
            break
    return await handler(request)


def _middlewares(
    app_auth: EmulatorAuth | None, inflight: set[asyncio.Task[Any]]
) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    accepted = app_auth.accepted() if app_auth else set()

    @web.middleware
    async def owned(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A handler outlives its client's disconnect (as in Pinot): stop() must await it.
        task = asyncio.current_task()
        assert task is not None
        inflight.add(task)
        try:
            return await handler(request)
        finally:
            inflight.discard(task)

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        exempt = request.path.startswith(_UNAUTHENTICATED)
        if accepted and not exempt and request.headers.get("Authorization") not in accepted:
            return error_response(401, "HTTP 401 Unauthorized")
        return await handler(request)

    return [owned, _errors, auth, _faults]


class PinotEmulator:
    """An emulated Pinot controller on ``host:port`` keeping its state under ``data_dir``."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        options: EmulatorOptions | None = None,
        auth: EmulatorAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
        seed_tables: Sequence[SeedTable] = (),
        generator: GeneratorSpec | None = None,
    ) -> None:
        self._store = Store(Path(data_dir))
        self._host = host
        self._port = port
        self._options = options or EmulatorOptions()
        self._auth = auth
        self._ssl = ssl_context
        self._seeds = list(seed_tables)
        self._generator = generator
        self._runner: web.AppRunner | None = None
        self._tasks = TaskOwner()
        self._cluster: Cluster | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    @property
    def cluster(self) -> Cluster:
        """The live cluster state, for tests that need to look behind the API."""
        assert self._cluster is not None, "emulator not started"
        return self._cluster

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def data_dir(self) -> Path:
        return self._store.root

    def _app(self, cluster: Cluster) -> web.Application:
        app = web.Application(
            middlewares=_middlewares(self._auth, self._inflight), client_max_size=16 << 20
        )
        app[CLUSTER] = cluster
        app[admin.FAULTS] = []
        # Order is precedence: literal sub-paths before /segments/{table}/{segment}.
        for module in (admin, instance_routes, tables, realtime_routes, segment_routes, upload):
            app.router.add_routes(module.routes)
        return app

    async def start(self) -> None:
        state = await asyncio.to_thread(self._store.prepare)
        cluster = Cluster(self._store, state, self._options, self._tasks)
        self._cluster = cluster
        self._runner = web.AppRunner(self._app(cluster), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl)
        await site.start()
        port = self._runner.addresses[0][1]
        cluster.url = f"{'https' if self._ssl else 'http'}://{self._host}:{port}"
        cluster.helix.add_controller(port)
        for seed in self._seeds:
            await seed_table(cluster, seed, self._generator)
        cluster.start_generators()
        log.info("pinot emulator listening on %s, data in %s", cluster.url, self._store.root)

    async def stop(self) -> None:
        await self._tasks.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await cancel_all(list(self._inflight))
        if self._cluster is not None:
            await self._cluster.save()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
