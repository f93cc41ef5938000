"""``az-agent sandbox``: a whole two-zone stack on one laptop, on embedded defaults.

A ``file`` bucket in a local directory, two Pinot controller emulators (zone 1 producing
segments, zone 2 empty), two throwaway PostgreSQL servers when the binaries are installed, and
two agents on ports 8081 (zone ``az1``, active) and 8082 (zone ``az2``, standby). It prints the
exact ``curl`` commands of the failover handshake and runs until SIGTERM or SIGINT (Ctrl-C),
then stops everything it started: agents, emulators, PostgreSQL servers and their temporary
directories. A second sandbox in the same folder finds the zones where the first left them (a
failover survives), so its banner shows the states the agents report on ``/status`` and points
the handshake from the zone that serves to the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from az_agent.agent.config import AgentConfig, parse_config
from az_agent.agent.signals import stop_on_signals
from az_agent.agent.wiring import build_agent, serve
from az_agent.emulators.pinot.seed import SeedTable
from az_agent.emulators.pinot.server import PinotEmulator
from az_agent.emulators.pinot.state import GeneratorSpec
from az_agent.sandbox.postgres import PASSWORD, PG_BIN, PostgresServer

log = logging.getLogger(__name__)

DATABASES = ["configdb", "orchestratordb"]
SERVING = ("ACTIVE", "FAILED", "PAUSED", "ACTIVATING", "PAUSING")
"""States of a zone that holds (or last held) the data: the handshake starts from it."""
DEMO_SQL = """
CREATE TABLE IF NOT EXISTS dashboards (id serial PRIMARY KEY, title text NOT NULL,
                                       created timestamptz NOT NULL DEFAULT now());
INSERT INTO dashboards (title) SELECT 'dashboard ' || g FROM generate_series(1, 50) g;
"""


def postgres_section(pg: PostgresServer | None) -> dict[str, Any]:
    """``az-service.config.postgres`` for an agent of a local stack: its zone's throwaway
    server (password secret ``postgres``), or no databases without one."""
    if pg is None:
        return {"databases": []}
    return {
        "host": pg.host,
        "port": pg.port,
        "user": pg.user,
        "passwordSecret": "postgres",
        "databases": DATABASES,
        "binDir": str(PG_BIN),
        "sslmode": "disable",
    }


@dataclass(frozen=True)
class SandboxOptions:
    base_dir: Path = Path("./az-agent-sandbox")
    ports: tuple[int, int] = (8081, 8082)
    segment_rate_per_min: float = 12.0
    segment_size: int = 256 << 10
    backup_interval_minutes: float = 2.0
    postgres: bool = True


def postgres_available() -> str | None:
    """None when throwaway servers can run here, else the reason they cannot."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found in {PG_BIN}"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb refuses to run as root"
    return None


def agent_config(
    zone: str,
    role: str,
    port: int,
    options: SandboxOptions,
    pinot_url: str,
    pg: PostgresServer | None,
) -> AgentConfig:
    base = options.base_dir.resolve()
    postgres = postgres_section(pg)
    raw = {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(base / "bucket")}}},
        "az-service": {
            "config": {
                "zone": zone,
                "role": role,
                "backupIntervalMinutes": options.backup_interval_minutes,
                "secretsDir": str(base / "secrets"),
                "http": {"host": "127.0.0.1", "port": port},
                "pinot": {"controllerUrl": pinot_url, "pollIntervalSeconds": 2},
                "postgres": postgres,
            }
        },
    }
    return parse_config(raw, environ={})


def handshake_text(
    options: SandboxOptions,
    postgres_note: str | None,
    states: tuple[str, str] = ("ACTIVE", "STANDBY"),
) -> str:
    """The banner: each zone with the state its agent reports, and the handshake from the zone
    that holds the data (az1 unless only az2 does) to the other, then back."""
    zones = [("az1", options.ports[0], states[0]), ("az2", options.ports[1], states[1])]
    if states[1] in SERVING and states[0] not in SERVING:
        zones.reverse()
    (src, src_port, src_state), (dst, dst_port, _) = zones
    pause = f"  curl -s -X POST localhost:{src_port}/pause"
    if src_state == "PAUSED":
        pause += "      # already PAUSED: answers 200 at once"
    lines = [
        "",
        "az-agent sandbox is up: "
        + ", ".join(f"zone {z} ({state}) on :{port}" for z, port, state in sorted(zones)),
        f"  bucket: {options.base_dir.resolve() / 'bucket'}",
        "  postgres: "
        + (postgres_note or "two throwaway servers, databases " + ", ".join(DATABASES)),
        "",
        f"The failover handshake, from {src} to {dst}:",
        f"  curl -s localhost:{src_port}/status",
        pause,
        f'  curl -s -X POST "localhost:{dst_port}/activate?zone={src}"',
        f"  curl -s localhost:{dst_port}/status      # repeat until the operation has succeeded",
        f"  curl -s -X POST localhost:{dst_port}/resume",
        "And back:",
        f"  curl -s -X POST localhost:{dst_port}/pause",
        f'  curl -s -X POST "localhost:{src_port}/activate?zone={dst}"',
        f"  curl -s -X POST localhost:{src_port}/resume",
        f"Metrics: curl -s localhost:{src_port}/metrics    Ctrl-C or SIGTERM stops everything.",
        "",
    ]
    return "\n".join(lines)


async def zone_states(ports: tuple[int, int]) -> tuple[str, str]:
    """The state each agent reports on its ``/status``."""
    states: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        for port in ports:
            async with client.get(f"http://127.0.0.1:{port}/status") as answer:
                states.append(str((await answer.json())["state"]))
    return states[0], states[1]


async def _start_postgres(stack: AsyncExitStack, name: str, base: Path) -> PostgresServer:
    server = PostgresServer(name)
    stack.push_async_callback(asyncio.to_thread, server.stop)  # a no-op before start()
    starting = asyncio.ensure_future(asyncio.to_thread(server.start))
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        # The thread cannot be interrupted: let it finish, so stop() finds what it started.
        with contextlib.suppress(Exception):
            await starting
        raise
    secret = base / "secrets" / "postgres"
    secret.mkdir(parents=True, exist_ok=True)
    (secret / "password").write_text(PASSWORD)
    return server


async def _seed_databases(server: PostgresServer) -> None:
    import asyncpg

    admin = await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, password=PASSWORD, database="postgres"
    )
    try:
        for db in DATABASES:
            await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    for db in DATABASES:
        conn = await asyncpg.connect(
            host=server.host, port=server.port, user=server.user, password=PASSWORD, database=db
        )
        try:
            await conn.execute(DEMO_SQL)
        finally:
            await conn.close()


async def run_sandbox(options: SandboxOptions) -> None:
    """Run the stack until SIGTERM or SIGINT, then stop all of it. A second signal while
    stopping is logged and ignored: it never cuts the PostgreSQL servers' stop short."""
    with stop_on_signals(again="already stopping") as stopping:
        try:
            await _run_stack(options)
        except asyncio.CancelledError:
            if not stopping:
                raise


async def _run_stack(options: SandboxOptions) -> None:
    base = options.base_dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    note = postgres_available() if options.postgres else "disabled (--no-postgres)"
    if note:
        sys.stdout.write(f"sandbox: PostgreSQL skipped: {note}\n")
    async with AsyncExitStack() as stack:
        servers: list[PostgresServer | None] = [None, None]
        if note is None:
            servers = list(
                await asyncio.gather(
                    _start_postgres(stack, "sandbox-az1", base),
                    _start_postgres(stack, "sandbox-az2", base),
                )
            )
            assert servers[0] is not None
            await _seed_databases(servers[0])
        pinot_one = await stack.enter_async_context(
            PinotEmulator(
                base / "pinot-az1",
                seed_tables=[SeedTable("events", "REALTIME", 2)],
                generator=GeneratorSpec(options.segment_rate_per_min, options.segment_size),
            )
        )
        pinot_two = await stack.enter_async_context(PinotEmulator(base / "pinot-az2"))
        configs = [
            agent_config("az1", "active", options.ports[0], options, pinot_one.url, servers[0]),
            agent_config("az2", "standby", options.ports[1], options, pinot_two.url, servers[1]),
        ]
        agents = [await stack.enter_async_context(build_agent(c)) for c in configs]
        ready = [asyncio.Event(), asyncio.Event()]
        async with asyncio.TaskGroup() as group:
            for agent, config, event in zip(agents, configs, ready, strict=True):
                group.create_task(serve(agent, config, ready=event))
            await asyncio.gather(*(event.wait() for event in ready))
            states = await zone_states(options.ports)
            sys.stdout.write(handshake_text(options, note, states) + "\n")
            sys.stdout.flush()
