"""``az-agent drill``: rehearse every kind of failover on a throwaway two-zone stack and prove
that nothing was lost.

It starts the sandbox's pieces (a ``file`` bucket, two Pinot emulators, two PostgreSQL servers
when installed) with each zone's agent as its own process, seeds sample data, then runs three
phases: a planned switchover az1 -> az2 (``/pause``, ``/activate``), the planned switch back
(with fresh data written in az2 first), and an unplanned failover (fresh data in az1, backed
up, then az1's agent SIGKILLed and az2 activated as soon as az1's lease has expired). After
each phase it compares, through the Pinot controller API and SQL, what the old zone committed
with what the new zone holds. Everything it started is stopped on every exit path: success,
failure, Ctrl-C, SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from rich.console import Console

from az_agent.agent.config import parse_config
from az_agent.agent.http.client import AgentClient, AgentRefused, AgentUnreachable, Body
from az_agent.agent.signals import stop_on_signals
from az_agent.drivers.errors import DriverError
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.storage.factory import open_object_store
from az_agent.emulators.pinot.cluster import EmulatorOptions
from az_agent.emulators.pinot.seed import SeedTable
from az_agent.emulators.pinot.server import PinotEmulator
from az_agent.sandbox.drill_report import (
    DatabaseCheck,
    DrillReport,
    PhaseReport,
    SegmentCheck,
    Step,
)
from az_agent.sandbox.handshake import ProgressView, follow_operation
from az_agent.sandbox.postgres import PASSWORD, PostgresServer, free_port
from az_agent.sandbox.processes import AgentProcess, AgentProcessError
from az_agent.sandbox.stack import DATABASES, postgres_available, postgres_section
from az_agent.state import load_catalog

log = logging.getLogger(__name__)

TABLE = "events"
REALTIME = f"{TABLE}_REALTIME"
SAMPLE_TABLES = ("dashboards", "alert_rules")
T = TypeVar("T")


class DrillFailed(Exception):
    """A step of the drill could not be carried out (the phase's error in the report)."""


@dataclass(frozen=True)
class DrillOptions:
    segments: int = 4
    """Segments committed in az1 before the first switchover; half as many more before each
    later phase."""
    segment_size_kb: int = 64
    rows: int = 200
    """Rows per sample table and database; a tenth as many more before each later phase."""
    postgres: bool = True
    directory: Path | None = None
    """Where the stack keeps its data; None: a temporary folder, removed at the end."""
    lease_ttl_seconds: int = 4
    step_timeout_seconds: float = 120.0


@dataclass
class Zone:
    name: str
    pinot: PinotEmulator
    agent: AgentProcess
    postgres: PostgresServer | None


class Drill:
    """One run: the stack (in ``stack``), the zones, and the report being filled in."""

    def __init__(self, options: DrillOptions, console: Console, base: Path) -> None:
        self.options = options
        self.console = console
        self.base = base
        self.started = time.monotonic()
        self.zones: dict[str, Zone] = {}
        self.bucket_config = parse_config(
            {
                "global": {
                    "cloudStorage": {"type": "file", "file": {"path": str(base / "bucket")}}
                },
                "az-service": {"config": {"zone": "drill"}},
            },
            environ={},
        )

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.console.print(f"[dim]{elapsed:6.1f}s[/dim] {text}", highlight=False)

    # --- the stack ---------------------------------------------------------------------------

    async def start(self, stack: AsyncExitStack, postgres_note: str | None) -> None:
        servers: list[PostgresServer | None] = [None, None]
        if postgres_note is None:
            self.say("starting two PostgreSQL servers")
            servers = list(
                await asyncio.gather(
                    _start_postgres(stack, "drill-az1"), _start_postgres(stack, "drill-az2")
                )
            )
            secret = self.base / "secrets" / "postgres"
            secret.mkdir(parents=True, exist_ok=True)
            (secret / "password").write_text(PASSWORD)
        emulator = EmulatorOptions(segment_size=self.options.segment_size_kb << 10)
        self.say("starting two Pinot controller emulators")
        pinots = [
            await stack.enter_async_context(
                PinotEmulator(
                    self.base / "pinot-az1",
                    options=emulator,
                    seed_tables=[SeedTable(TABLE, "REALTIME", 2)],
                )
            ),
            await stack.enter_async_context(
                PinotEmulator(self.base / "pinot-az2", options=emulator)
            ),
        ]
        if servers[0] is not None:
            await create_sample_databases(servers[0], self.options.rows)
        for name, role, pinot, server in zip(
            ("az1", "az2"), ("active", "standby"), pinots, servers, strict=True
        ):
            agent = AgentProcess(name, self._agent_document(name, role, pinot, server), self.base)
            stack.push_async_callback(agent.stop)
            self.zones[name] = Zone(name, pinot, agent, server)
        self.say("starting the agents of az1 and az2 (each its own process)")
        await asyncio.gather(*(zone.agent.start() for zone in self.zones.values()))
        await self.produce("az1", self.options.segments, 0)
        if servers[0] is not None:
            self.say(f"zone az1: seeded {self.options.rows} rows per sample table")

    def _agent_document(
        self, zone: str, role: str, pinot: PinotEmulator, pg: PostgresServer | None
    ) -> dict[str, Any]:
        ttl = self.options.lease_ttl_seconds
        postgres = postgres_section(pg)
        return {
            "global": {
                "cloudStorage": {"type": "file", "file": {"path": str(self.base / "bucket")}}
            },
            "az-service": {
                "config": {
                    "zone": zone,
                    "role": role,
                    "backupIntervalMinutes": 0.1,
                    "secretsDir": str(self.base / "secrets"),
                    "http": {"host": "127.0.0.1", "port": free_port()},
                    "lease": {
                        "ttlSeconds": ttl,
                        "renewDeadlineSeconds": max(ttl - 1, 1),
                        "retryPeriodSeconds": 1,
                    },
                    "pinot": {"controllerUrl": pinot.url, "pollIntervalSeconds": 0.5},
                    "postgres": postgres,
                    "rehydration": {"concurrency": 4, "batchSize": 10},
                }
            },
        }

    async def produce(self, zone: str, segments: int, rows: int) -> datetime:
        """Fresh data in ``zone``: committed segments in its Pinot, rows in its databases.
        The time the last of it was written."""
        cluster = self.zones[zone].pinot.cluster
        made = [n for _ in range(segments) if (n := await cluster.produce_segment(REALTIME))]
        if len(made) < segments:
            raise DrillFailed(f"zone {zone}'s Pinot committed {len(made)} of {segments} segments")
        server = self.zones[zone].postgres
        if server is not None and rows:
            for db in DATABASES:
                await insert_sample_rows(server, db, rows, zone)
        what = f"{segments} segments of {self.options.segment_size_kb} KiB"
        if server is not None and rows:
            what += f", {rows} rows per sample table"
        self.say(f"zone {zone}: wrote {what}")
        return datetime.now(UTC)

    # --- the phases --------------------------------------------------------------------------

    async def planned(self, report: PhaseReport) -> None:
        """``/pause`` the source, ``/activate`` the target, ``/resume`` it."""
        source, target = self.zones[report.source], self.zones[report.target]
        async with AgentClient(source.agent.url) as old, AgentClient(target.agent.url) as new:
            await self._until(lambda: _leading(old), f"zone {source.name} to lead")
            failed_at = datetime.now(UTC)
            self.say(f"planned: pausing {source.name}")
            code, paused = await old.pause()
            operation = paused.get("operation") or {}
            if code != 200 or paused.get("state") != "PAUSED":
                raise DrillFailed(f"pause of {source.name} answered {code}: {operation}")
            report.steps.append(Step("/pause of the old zone", operation.get("durationSeconds")))
            self.say(f"planned: activating {target.name} from {source.name}")
            _, accepted = await new.activate(source.name)
            await self._activation(new, accepted, failed_at, report)
            await new.resume()
        await self._verify(report, failed_at)

    async def unplanned(self, report: PhaseReport) -> None:
        """SIGKILL the source's agent once its data is backed up; activate the target as soon
        as the source's lease has expired (``/activate`` answers 409 until then)."""
        source, target = self.zones[report.source], self.zones[report.target]
        async with AgentClient(source.agent.url) as old:
            await self._until(lambda: _leading(old), f"zone {source.name} to lead")
        written = await self.produce(
            source.name, max(self.options.segments // 2, 1), max(self.options.rows // 10, 1)
        )
        self.say(f"unplanned: waiting until zone {source.name} has backed all of it up")
        await self._until(lambda: self._backed_up(source, written), "the backups")
        failed_at = datetime.now(UTC)
        killed = time.monotonic()
        await source.agent.kill()
        self.say(f"unplanned: zone {source.name}'s agent SIGKILLed; waiting for its lease")
        async with AgentClient(target.agent.url) as new:
            accepted = await self._until(
                lambda: _activate_when_expired(new, source.name), "the lease to expire"
            )
            report.steps.append(Step("wait for its lease to expire", time.monotonic() - killed))
            self.say(f"unplanned: activating {target.name} from {source.name}")
            await self._activation(new, accepted, failed_at, report)
            await new.resume()
        await self._verify(report, failed_at)

    async def _activation(
        self, client: AgentClient, accepted: Body, failed_at: datetime, report: PhaseReport
    ) -> None:
        operation_id = str(accepted["operation"]["id"])
        with ProgressView(self.console) as view:
            status = await asyncio.wait_for(
                follow_operation(client, operation_id, view.update, poll_seconds=0.2),
                self.options.step_timeout_seconds,
            )
        operation = status.get("operation") or {}
        for phase in operation.get("phases") or []:
            if phase.get("status") != "skipped":
                report.steps.append(Step(phase["name"], phase.get("seconds")))
        if operation.get("id") != operation_id or operation.get("status") != "succeeded":
            raise DrillFailed(f"activation of {report.target} failed: {operation.get('error')}")
        if status.get("state") != "ACTIVE":
            raise DrillFailed(f"zone {report.target} is {status.get('state')} after activating")
        # Seen ACTIVE on /status (polled every 0.2 s): the recovery as a client sees it.
        report.rto_seconds = (datetime.now(UTC) - failed_at).total_seconds()

    async def _backed_up(self, zone: Zone, written: datetime) -> bool:
        """Every segment committed in the zone's Pinot is in its catalog, and every database
        has a dump that started after ``written``."""
        committed = await _committed(zone.pinot.url)
        store = await open_object_store(self.bucket_config.storage, None)
        try:
            catalog = await load_catalog(store, zone.name)
        finally:
            await store.close()
        held = {pair for table in catalog.tables() for pair in catalog.segment_crcs(table).items()}
        if not set(committed.items()) <= held:
            return False
        if zone.postgres is None:
            return True
        newest = [catalog.newest_dump(db) for db in DATABASES]
        return all(d is not None and d.started_at > written for d in newest)

    async def _verify(self, report: PhaseReport, failed_at: datetime) -> None:
        source, target = self.zones[report.source], self.zones[report.target]
        old = await _committed_sized(source.pinot.url)
        new = await _committed_sized(target.pinot.url)
        check = SegmentCheck(committed=len(old))
        for name, (crc, size) in sorted(old.items()):
            if name not in new:
                check.missing.append(name)
                check.bytes_missing += size
            elif new[name][0] != crc:
                check.crc_mismatches.append(name)
            else:
                check.present += 1
        report.segments = check
        if source.postgres is not None and target.postgres is not None:
            report.databases = [
                await compare_database(source.postgres, target.postgres, db) for db in DATABASES
            ]
            report.dump_age_seconds = await self._dump_age(report.source, failed_at)
        report.ok = True
        outcome = "nothing lost" if not report.lost else "DATA LOST"
        self.say(f"{report.name}: verified, {outcome}")

    async def _dump_age(self, zone: str, failed_at: datetime) -> float | None:
        """How old the newest dump of the source was at the failure (0: taken after it, as
        the pause's final dump is)."""
        store = await open_object_store(self.bucket_config.storage, None)
        try:
            catalog = await load_catalog(store, zone)
        finally:
            await store.close()
        ages = []
        for db in DATABASES:
            dump = catalog.newest_dump(db)
            if dump is None:
                return None
            ages.append(max((failed_at - dump.started_at).total_seconds(), 0.0))
        return max(ages)

    async def _until(self, attempt: Callable[[], Awaitable[T | None]], what: str) -> T:
        deadline = time.monotonic() + self.options.step_timeout_seconds
        while True:
            value = await attempt()
            if value:
                return value
            if time.monotonic() > deadline:
                raise DrillFailed(f"timed out after {self.options.step_timeout_seconds} s: {what}")
            await asyncio.sleep(0.2)


async def _leading(client: AgentClient) -> bool:
    status = await client.status()
    return bool(status.get("leading")) and status.get("state") == "ACTIVE"


async def _activate_when_expired(client: AgentClient, source: str) -> Body | None:
    """The 202 answer once the source's lease has expired; None while it is live."""
    try:
        _, body = await client.activate(source)
    except AgentRefused as exc:
        if exc.status == 409 and "retryAfterSeconds" in exc.body:
            return None
        raise DrillFailed(f"activation refused: {exc.line()}") from None
    return body


async def _committed_sized(url: str) -> dict[str, tuple[str, int]]:
    """Segment name -> (CRC, size) of every committed segment of every table in that Pinot."""
    controller = HttpPinotController(url)
    try:
        found: dict[str, tuple[str, int]] = {}
        for table in await controller.list_tables():
            for segment in await controller.backup_ready_segments(table):
                key = f"{table}/{segment.name}"
                found[key] = (str(segment.crc), segment.size_bytes or 0)
        return found
    finally:
        await controller.close()


async def _committed(url: str) -> dict[str, str]:
    """Segment name -> CRC of the committed segments (names as the catalog keeps them)."""
    return {k.split("/", 1)[1]: crc for k, (crc, _) in (await _committed_sized(url)).items()}


# --- PostgreSQL --------------------------------------------------------------------------------


async def _start_postgres(stack: AsyncExitStack, name: str) -> PostgresServer:
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
    return server


async def _connect(server: PostgresServer, database: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, password=PASSWORD, database=database
    )


async def create_sample_databases(server: PostgresServer, rows: int) -> None:
    admin = await _connect(server, "postgres")
    try:
        for db in DATABASES:
            await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    for db in DATABASES:
        conn = await _connect(server, db)
        try:
            for table in SAMPLE_TABLES:
                await conn.execute(
                    f"CREATE TABLE {table} (id serial PRIMARY KEY, title text NOT NULL, "
                    "body jsonb NOT NULL, created timestamptz NOT NULL DEFAULT now())"
                )
        finally:
            await conn.close()
        await insert_sample_rows(server, db, rows, "az1")


async def insert_sample_rows(server: PostgresServer, database: str, rows: int, zone: str) -> None:
    conn = await _connect(server, database)
    try:
        for table in SAMPLE_TABLES:
            await conn.execute(
                f"INSERT INTO {table} (title, body) SELECT '{zone} ' || $1::text || ' ' || g, "
                "jsonb_build_object('n', g, 'zone', $1::text) FROM generate_series(1, $2) g",
                table,
                rows,
            )
    finally:
        await conn.close()


async def _table_digests(server: PostgresServer, database: str) -> dict[str, tuple[int, str]]:
    """Per table of the public schema: row count and an MD5 over its rows in a stable order."""
    conn = await _connect(server, database)
    try:
        names = await conn.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
        )
        digests = {}
        for (name,) in names:
            quoted = '"' + name.replace('"', '""') + '"'
            row = await conn.fetchrow(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                f"FROM {quoted} t"
            )
            assert row is not None
            digests[name] = (int(row[0]), str(row[1]))
        return digests
    finally:
        await conn.close()


async def compare_database(
    source: PostgresServer, target: PostgresServer, database: str
) -> DatabaseCheck:
    try:
        old = await _table_digests(source, database)
        new = await _table_digests(target, database)
    except (OSError, asyncpg.PostgresError) as exc:
        return DatabaseCheck(database, False, 0, 0, [f"cannot compare: {exc}"])
    differences = []
    for table in sorted(set(old) | set(new)):
        if table not in new:
            differences.append(f"table {table} missing in the new zone")
        elif table not in old:
            differences.append(f"table {table} only in the new zone")
        elif old[table] != new[table]:
            differences.append(
                f"table {table}: {old[table][0]} rows in the old zone, {new[table][0]} in the "
                "new, contents differ"
            )
    rows = sum(count for count, _ in old.values())
    return DatabaseCheck(database, not differences, len(old), rows, differences)


# --- the run -----------------------------------------------------------------------------------


PHASE_FAILURES = (
    DrillFailed,
    AgentRefused,
    AgentUnreachable,
    DriverError,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
)
PHASES = (
    ("planned switchover", "az1", "az2"),
    ("planned switch back", "az2", "az1"),
    ("unplanned failover", "az1", "az2"),
)


async def run_drill(options: DrillOptions, console: Console) -> DrillReport:
    """Run the drill; SIGTERM or SIGINT stops it, cleans up and returns the partial report."""
    note = postgres_available() if options.postgres else "disabled (--no-postgres)"
    report = DrillReport(
        options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        postgres=f"skipped: {note}" if note else "two throwaway servers, databases compared",
    )
    started = time.monotonic()
    with stop_on_signals(again="already stopping: cleaning up") as stopping:
        try:
            await _run(options, console, report, note)
        except asyncio.CancelledError:
            if not stopping:
                raise
            report.interrupted = f"{stopping[0].name}: stopped everything the drill started"
    report.duration_seconds = time.monotonic() - started
    return report


async def _run(
    options: DrillOptions, console: Console, report: DrillReport, note: str | None
) -> None:
    if options.directory is None:
        base = Path(tempfile.mkdtemp(prefix="az-drill-"))
    else:
        base = options.directory.resolve()
        base.mkdir(parents=True, exist_ok=True)
    try:
        drill = Drill(options, console, base)
        async with AsyncExitStack() as stack:
            try:
                await drill.start(stack, note)
            except (DrillFailed, AgentProcessError, DriverError, OSError, RuntimeError) as exc:
                report.error = f"the stack did not start: {exc}"
                return
            for index, (name, source, target) in enumerate(PHASES):
                phase = PhaseReport(name, source, target)
                report.phases.append(phase)
                drill.say(f"[bold]phase {index + 1}/3: {name}, {source} -> {target}[/bold]")
                try:
                    if index == 1:
                        await drill.produce(
                            source, max(options.segments // 2, 1), max(options.rows // 10, 1)
                        )
                    if name.startswith("planned"):
                        await drill.planned(phase)
                    else:
                        await drill.unplanned(phase)
                except PHASE_FAILURES as exc:
                    phase.error = f"{type(exc).__name__}: {exc}"
                    drill.say(f"{name} failed: {phase.error}")
                    for zone in (source, target):
                        tail = drill.zones[zone].agent.log_tail(5)
                        drill.say(f"last lines of zone {zone}'s agent log:\n{tail}")
                    return
            drill.say("stopping the stack")
    finally:
        if options.directory is None:
            await asyncio.to_thread(shutil.rmtree, base, True)


__all__ = ["DrillOptions", "run_drill"]
