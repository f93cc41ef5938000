"""``az-agent run`` with no configuration file, as a new user starts it, while its PostgreSQL is
down: it serves on the embedded defaults, says what is down, and backs up once PostgreSQL is
back, without a restart. A real process, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from az_agent.sandbox.postgres import free_port
from tests.integration.postgres.helpers import connect, database_names
from tests.servers.postgres import PostgresServer

DATABASES = ("configdb", "orchestratordb")  # the embedded defaults'
ENV = "AZ_AGENT__AZ_SERVICE__CONFIG__"


@contextlib.asynccontextmanager
async def forwarding(port: int, server: PostgresServer) -> AsyncIterator[None]:
    """PostgreSQL "comes back" at 127.0.0.1:``port``: every connection relayed to ``server``."""
    tasks: set[asyncio.Future[Any]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(server.host, server.port)
        both = asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        task = asyncio.ensure_future(both)
        tasks.add(task)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        tasks.discard(task)

    listener = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        yield
    finally:
        listener.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.wait_closed()


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        return response.status, await response.json()


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _create_databases(server: PostgresServer) -> None:
    existing = await database_names(server)
    async with connect(server) as conn:
        for name in DATABASES:
            if name not in existing:
                await conn.execute(f'CREATE DATABASE "{name}"')


async def test_run_without_config_serves_while_postgres_is_down_then_backs_up(
    tmp_path: Path, zone1: PostgresServer
) -> None:
    await _create_databases(zone1)
    http_port, pg_port = free_port(), free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AZ_AGENT", "PG"))}
    environ |= {
        # Only what a test on a shared machine must move: the port to listen on, and where
        # PostgreSQL is (nobody listens there yet). Everything else is the embedded defaults.
        f"{ENV}HTTP__HOST": "127.0.0.1",
        f"{ENV}HTTP__PORT": str(http_port),
        f"{ENV}POSTGRES__HOST": "127.0.0.1",
        f"{ENV}POSTGRES__PORT": str(pg_port),
        f"{ENV}POSTGRES__BINDIR": str(zone1.bin_dir),
        "PGPASSWORD": zone1.password,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "az_agent.cli",
        "run",
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    url = f"http://127.0.0.1:{http_port}"
    state: dict[str, Any] = {}

    async def answers(path: str, status: int) -> bool:
        with contextlib.suppress(aiohttp.ClientConnectionError):
            state["status"], state["body"] = await _get(f"{url}{path}")
            return bool(state["status"] == status)
        assert process.returncode is None, "the agent exited"
        return False

    async def dumps_failed() -> bool:
        await answers("/status", 200)
        databases = state["body"]["backups"]["postgres"]["databases"]
        return all(databases[db]["failures"] > 0 for db in DATABASES)

    async def dumped() -> bool:
        await answers("/status", 200)
        databases = state["body"]["backups"]["postgres"]["databases"]
        return all(databases[db]["newestDump"] is not None for db in DATABASES)

    try:
        await _eventually(lambda: answers("/healthz", 200), "/healthz 200", 30)
        await _eventually(lambda: answers("/readyz", 503), "/readyz 503", 30)
        body = state["body"]
        assert "postgres" in body["down"], body
        assert "cannot reach the server" in body["dependencies"]["postgres"]
        assert body["dependencies"]["bucket"] == "ok"
        await _eventually(dumps_failed, "a dump attempt that failed", 60)
        status = state["body"]
        assert status["state"] == "ACTIVE"
        assert "cannot reach" in status["dependencies"]["postgres"]
        async with aiohttp.ClientSession() as client, client.get(f"{url}/metrics") as response:
            metrics = await response.text()
        assert 'az_agent_dependency_up{dependency="postgres"} 0.0' in metrics

        async with forwarding(pg_port, zone1):  # PostgreSQL is back at its address
            await _eventually(dumped, "a dump of every database", 120)
            await _eventually(lambda: answers("/readyz", 503), "a fresh readiness", 10)
            assert "postgres" not in state["body"]["down"], state["body"]
            assert process.returncode is None, "no restart"
        keys = [p.name for p in (tmp_path / "az-agent-data/bucket/az1/postgres").rglob("*.dump")]
        assert len(keys) >= len(DATABASES), keys
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()[-2000:]


async def test_kubernetes_that_cannot_be_configured_refuses_to_start(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AZ_AGENT", "KUBE"))}
    environ |= {
        f"{ENV}HTTP__HOST": "127.0.0.1",
        f"{ENV}HTTP__PORT": str(free_port()),
        f"{ENV}POSTGRES__DATABASES": "[]",
        f"{ENV}KUBERNETES__ENABLED": "true",
        f"{ENV}KUBERNETES__KUBECONFIG": str(tmp_path / "no-such-kubeconfig"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "az_agent.cli",
        "run",
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, stderr.decode()[-2000:]
    last = stderr.decode().strip().splitlines()[-1]
    assert last.startswith("az-agent: refusing to start: kubernetes:"), last
