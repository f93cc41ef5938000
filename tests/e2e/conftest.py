"""A two-zone stack for end-to-end failover tests, all real but Pinot (an emulator).

Bucket: moto (S3). PostgreSQL: two real servers. Alertmanager: the real one. Pinot: two
controller emulators. Agents: built exactly as ``az-agent run`` builds them, served over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from az_agent.agent.config import ENV_PREFIX, AgentConfig, parse_config
from az_agent.agent.daemon import Agent
from az_agent.agent.secrets import read_storage_secrets
from az_agent.agent.wiring import build_agent, serve
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.factory import open_object_store
from az_agent.emulators.pinot.cluster import EmulatorOptions
from az_agent.emulators.pinot.seed import SeedTable
from az_agent.emulators.pinot.server import PinotEmulator
from az_agent.sandbox.postgres import PASSWORD, PG_BIN, PostgresServer, free_port
from az_agent.state import LeaseKeeper, LeaseObservation
from tests.conftest import BackendPool
from tests.servers.alertmanager import AlertmanagerServer

DATABASES = ["configdb", "orchestratordb"]
TABLE = "events"
REALTIME_TABLE = f"{TABLE}_REALTIME"


@pytest.fixture(scope="session")
def alertmanager() -> Iterator[AlertmanagerServer]:
    server = AlertmanagerServer()
    server.start()
    yield server
    server.stop()


async def reset_databases(server: PostgresServer, rows: int, tag: str) -> None:
    """Fresh configdb and orchestratordb with ``rows`` rows tagged ``tag``."""
    admin = await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, password=PASSWORD, database="postgres"
    )
    try:
        for db in DATABASES:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    for db in DATABASES:
        await execute(
            server,
            db,
            "CREATE TABLE dashboards (id serial PRIMARY KEY, title text NOT NULL);"
            "CREATE INDEX dashboards_title ON dashboards (title);"
            "CREATE VIEW dashboard_titles AS SELECT title FROM dashboards;"
            f"INSERT INTO dashboards (title) SELECT '{tag}-' || g "
            f"FROM generate_series(1, {rows}) g;",
        )


async def execute(server: PostgresServer, database: str, sql: str) -> None:
    conn = await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, password=PASSWORD, database=database
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def table_rows(server: PostgresServer, database: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, password=PASSWORD, database=database
    )
    try:
        rows = await conn.fetch("SELECT id, title FROM dashboards ORDER BY id")
        return [(row["id"], row["title"]) for row in rows]
    finally:
        await conn.close()


@dataclass
class Zone:
    """One zone of the stack: its Pinot emulator, PostgreSQL, agent and HTTP endpoint."""

    name: str
    pinot: PinotEmulator
    postgres: PostgresServer
    config: AgentConfig
    url: str = ""
    agent: Agent | None = None
    task: asyncio.Task[None] | None = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def start(self) -> None:
        self.agent = await self._stack.enter_async_context(build_agent(self.config))
        ready = asyncio.Event()
        self.task = asyncio.create_task(serve(self.agent, self.config, ready=ready))
        await asyncio.wait_for(ready.wait(), 30)
        self.url = f"http://127.0.0.1:{self.config.service.http.port}"

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        await self._stack.aclose()
        self._stack = contextlib.AsyncExitStack()

    def controller(self) -> HttpPinotController:
        return HttpPinotController(self.pinot.url)


def zone_config(
    zone: str,
    role: str,
    storage: dict[str, Any],
    secrets_dir: Path,
    pinot_url: str,
    postgres: PostgresServer,
    alertmanager_url: str,
) -> AgentConfig:
    raw = {
        "global": {"cloudStorage": storage},
        "az-service": {
            "config": {
                "zone": zone,
                "role": role,
                "backupIntervalMinutes": 60,
                "secretsDir": str(secrets_dir),
                "http": {"host": "127.0.0.1", "port": free_port()},
                "lease": {"ttlSeconds": 4, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 1},
                "pinot": {"controllerUrl": pinot_url, "pollIntervalSeconds": 0.5},
                "postgres": {
                    "host": postgres.host,
                    "port": postgres.port,
                    "user": postgres.user,
                    "passwordSecret": "postgres",
                    "databases": DATABASES,
                    "binDir": str(PG_BIN),
                    "sslmode": "disable",
                },
                "alertmanager": {
                    "url": alertmanager_url,
                    "matchers": [{"name": "cluster", "value": zone}],
                },
                "rehydration": {"concurrency": 4, "batchSize": 5},
            }
        },
    }
    return parse_config(raw, environ={})


@pytest.fixture
def segment_size() -> int:
    """Size of the segments the emulators commit; a test module overrides it when it matters."""
    return EmulatorOptions().segment_size


@pytest.fixture
async def stack(
    backend_pool: BackendPool,
    pg_servers: tuple[PostgresServer, PostgresServer],
    alertmanager: AlertmanagerServer,
    tmp_path: Path,
    segment_size: int,
) -> AsyncIterator[tuple[Zone, Zone]]:
    backend = backend_pool.get("s3")
    settings, secrets = await backend.new_bucket()
    assert secrets is not None
    assert secrets.access_key is not None
    assert secrets.secret_key is not None
    secret_dir = tmp_path / "secrets"
    (secret_dir / "cloud-storage-secret").mkdir(parents=True)
    (secret_dir / "cloud-storage-secret" / "accessKey").write_text(
        secrets.access_key.get_secret_value()
    )
    (secret_dir / "cloud-storage-secret" / "secretKey").write_text(
        secrets.secret_key.get_secret_value()
    )
    (secret_dir / "postgres").mkdir()
    (secret_dir / "postgres" / "password").write_text(PASSWORD)
    storage = settings.model_dump(mode="json", by_alias=True)
    storage["prefix"] = f"e2e-{uuid.uuid4().hex[:8]}"
    one, two = pg_servers
    await reset_databases(one, 300, "az1")
    await reset_databases(two, 5, "stale")
    options = EmulatorOptions(segment_size=segment_size)
    async with contextlib.AsyncExitStack() as emulators:
        pinot_one = await emulators.enter_async_context(
            PinotEmulator(
                tmp_path / "pinot-az1",
                options=options,
                seed_tables=[SeedTable(TABLE, "REALTIME", 2)],
            )
        )
        pinot_two = await emulators.enter_async_context(
            PinotEmulator(tmp_path / "pinot-az2", options=options)
        )
        zones = (
            Zone(
                "az1",
                pinot_one,
                one,
                zone_config(
                    "az1", "active", storage, secret_dir, pinot_one.url, one, alertmanager.url
                ),
            ),
            Zone(
                "az2",
                pinot_two,
                two,
                zone_config(
                    "az2", "standby", storage, secret_dir, pinot_two.url, two, alertmanager.url
                ),
            ),
        )
        try:
            yield zones
        finally:
            for zone in zones:
                await zone.stop()


async def call(method: str, url: str, *, expect: int | None = None) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as client,
        client.request(method, url) as response,
    ):
        body: dict[str, Any] = await response.json()
        if expect is not None:
            assert response.status == expect, (response.status, body)
        body["_status"] = response.status
        return body


async def wait_for(predicate: Any, what: str, within: float = 90, interval: float = 0.25) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------- agents in their own process

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 300


class AgentProcess:
    """A zone's agent run as ``az-agent run --config FILE`` in its own process, so that a test
    can SIGKILL it. Each start logs to new files under ``directory``; a failed test's report
    shows them (see ``pytest_runtest_makereport``)."""

    def __init__(self, config: AgentConfig, directory: Path, service: dict[str, Any]) -> None:
        self.config = config
        self.zone = config.zone
        self.url = f"http://127.0.0.1:{config.service.http.port}"
        self.config_file = directory / f"agent-{self.zone}.yaml"
        self.logs: list[Path] = []
        self._directory = directory
        self._process: asyncio.subprocess.Process | None = None
        document = config.model_dump(mode="json", by_alias=True)
        document["az-service"]["config"] = _merged(
            {**document["az-service"]["config"], "zone": config.zone}, service
        )
        self.config_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, within: float = 30) -> None:
        """Start the process and wait until ``/healthz`` answers and recovery has ended (the
        API answers while recovering, but refuses POSTs with 503 until then)."""
        assert not self.is_running, f"zone {self.zone}'s agent process already runs"
        stem = self._directory / f"agent-{self.zone}-run{len(self.logs) // 2 + 1}"
        out, err = stem.with_suffix(".stdout"), stem.with_suffix(".stderr")
        self.logs += [out, err]
        environ = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "az_agent.cli",
                "run",
                "--config",
                str(self.config_file),
                stdout=stdout,
                stderr=stderr,
                cwd=REPO_ROOT,
                env={**environ, "PYTHONUNBUFFERED": "1"},
            )
        await wait_for(self._healthy, f"zone {self.zone}'s agent process to serve", within, 0.1)

    async def _healthy(self) -> bool:
        process = self._process
        assert process is not None
        if process.returncode is not None:
            raise AssertionError(f"zone {self.zone}'s agent exited with {process.returncode}")
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as client,
                client.get(f"{self.url}/healthz") as response,
            ):
                return response.status == 200 and not (await response.json()).get("recovering")
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, the lease is left as it was."""
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def terminate(self, within: float = 20) -> int:
        """SIGTERM and wait for a clean exit; its exit code."""
        process = self._process
        assert process is not None
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), within)
            except TimeoutError:
                await self.kill()
                raise AssertionError(f"zone {self.zone}'s agent ignored SIGTERM") from None
        assert process.returncode is not None
        return process.returncode

    def log_text(self) -> str:
        parts = []
        for path in self.logs:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            shown = lines[-LOG_TAIL_LINES:]
            parts.append(f"----- {path.name}, {len(shown)} of {len(lines)} lines\n")
            parts.append("\n".join(shown))
        return "\n".join(parts)


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


AgentProcessFactory = Callable[..., AgentProcess]
_AGENT_PROCESSES = pytest.StashKey[list[AgentProcess]]()


@pytest.fixture
async def agent_processes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AgentProcessFactory]:
    """``make(zone, **service_overrides)``: that zone's agent as a process (not started).

    Overrides are merged into ``az-service.config`` (e.g. ``rehydration={"concurrency": 2}``).
    Every process still running at the end is killed."""
    made: list[AgentProcess] = []
    request.node.stash[_AGENT_PROCESSES] = made

    def make(zone: Zone, **service: Any) -> AgentProcess:
        agent = AgentProcess(zone.config, tmp_path, service)
        made.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in made:
            await agent.kill()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the test's agent processes to its report when it fails."""
    report = yield
    if report.failed:
        for agent in item.stash.get(_AGENT_PROCESSES, []):
            report.sections.append((f"az-agent {agent.zone} process", agent.log_text()))
    return report


# ------------------------------------------------------------------------------ the bucket


@contextlib.asynccontextmanager
async def open_bucket(config: AgentConfig) -> AsyncIterator[ObjectStore]:
    """The stack's bucket as the agents see it (same prefix, same credentials)."""
    secrets = await asyncio.to_thread(read_storage_secrets, config)
    store = await open_object_store(config.storage, secrets)
    try:
        yield store
    finally:
        await store.close()


async def bucket_listing(store: ObjectStore, prefix: str = "") -> dict[str, tuple[int, str]]:
    """Every object under ``prefix``: key -> (size, version)."""
    return {info.key: (info.size, info.version) async for info in store.list(prefix)}


def without_health(listing: dict[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
    """A listing without the zones' ``health.json``: a standby zone's replicas publish it on
    their own clock, whatever a test's requests do."""
    return {k: v for k, v in listing.items() if not k.endswith("/health.json")}


async def status_of(url: str) -> dict[str, Any]:
    return await call("GET", f"{url}/status", expect=200)


async def activation_done(url: str) -> dict[str, Any] | None:
    """The status once the activation succeeded; None while it runs; fails if it failed."""
    body = await status_of(url)
    operation = body["operation"]
    assert operation is not None, body
    assert operation["status"] != "failed", operation
    if body["state"] == "ACTIVE" and operation["status"] == "succeeded":
        return body
    return None


async def leads(zone: Zone) -> bool:
    """Whether ``zone``'s agent holds its lease and runs its leader session (backs up) now."""
    body = await call("GET", f"{zone.url}/status")
    return bool(body["leader"] and body["leading"])


async def dumped(zone: Zone) -> bool:
    """Whether ``zone``'s agent has a good dump of every configured database."""
    postgres = (await call("GET", f"{zone.url}/status"))["backups"]["postgres"]
    return all(db.get("newestDump") for db in postgres["databases"].values())


async def prometheus(zone: Zone) -> dict[str, float]:
    """The agent's /metrics as {series: value}."""
    async with aiohttp.ClientSession() as client, client.get(f"{zone.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


# ------------------------------------------------------------------------- counting rounds


class LeaseReads:
    """Counts the completed reads of one lease by an in-process agent's loops (the watch loop
    reads its zone's lease every round while it does not hold it), so that a test waits for a
    number of rounds, the agent's chances to do the wrong thing, instead of sleeping."""

    def __init__(self, keeper: LeaseKeeper, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        read = keeper.observe

        async def observe() -> LeaseObservation:
            observation = await read()
            self.count += 1
            return observation

        monkeypatch.setattr(keeper, "observe", observe)

    async def wait(self, rounds: int, what: str) -> None:
        """Until ``rounds`` more reads have completed."""
        target = self.count + rounds

        async def done() -> bool:
            return self.count >= target

        await wait_for(done, what, interval=0.05)
