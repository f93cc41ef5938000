"""``az-agent sandbox``: a whole two-zone stack on one laptop, on embedded defaults.

A ``file`` bucket in a local directory, two Pinot controller emulators (zone 1 producing
segments, zone 2 empty), two throwaway PostgreSQL servers when the binaries are installed, and
two agents on ports 8081 (zone ``az1``, active) and 8082 (zone ``az2``, standby). It prints the
exact ``curl`` commands of the failover handshake and runs until interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from az_agent.agent.config import AgentConfig, parse_config
from az_agent.agent.wiring import build_agent, serve
from az_agent.emulators.pinot.seed import SeedTable
from az_agent.emulators.pinot.server import PinotEmulator
from az_agent.emulators.pinot.state import GeneratorSpec
from az_agent.sandbox.postgres import PASSWORD, PG_BIN, PostgresServer

log = logging.getLogger(__name__)

DATABASES = ["configdb", "orchestratordb"]
DEMO_SQL = """
CREATE TABLE IF NOT EXISTS dashboards (id serial PRIMARY KEY, title text NOT NULL,
                                       created timestamptz NOT NULL DEFAULT now());
INSERT INTO dashboards (title) SELECT 'dashboard ' || g FROM generate_series(1, 50) g;
"""


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
    postgres: dict[str, Any] = {"databases": []}
    if pg is not None:
        postgres = {
            "host": pg.host,
            "port": pg.port,
            "user": pg.user,
            "passwordSecret": "postgres",
            "databases": DATABASES,
            "binDir": str(PG_BIN),
            "sslmode": "disable",
        }
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


def handshake_text(options: SandboxOptions, postgres_note: str | None) -> str:
    one, two = options.ports
    lines = [
        "",
        f"az-agent sandbox is up: zone az1 (active) on :{one}, zone az2 (standby) on :{two}",
        f"  bucket: {options.base_dir.resolve() / 'bucket'}",
        "  postgres: "
        + (postgres_note or "two throwaway servers, databases " + ", ".join(DATABASES)),
        "",
        "The failover handshake:",
        f"  curl -s localhost:{one}/status",
        f"  curl -s -X POST localhost:{one}/pause",
        f'  curl -s -X POST "localhost:{two}/activate?zone=az1"',
        f"  curl -s localhost:{two}/status      # repeat until the operation has succeeded",
        f"  curl -s -X POST localhost:{two}/resume",
        "And back:",
        f"  curl -s -X POST localhost:{two}/pause",
        f'  curl -s -X POST "localhost:{one}/activate?zone=az2"',
        f"  curl -s -X POST localhost:{one}/resume",
        f"Metrics: curl -s localhost:{one}/metrics    Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


async def _start_postgres(stack: AsyncExitStack, name: str, base: Path) -> PostgresServer:
    server = PostgresServer(name)
    await asyncio.to_thread(server.start)
    stack.callback(server.stop)
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
            sys.stdout.write(handshake_text(options, note) + "\n")
            sys.stdout.flush()
