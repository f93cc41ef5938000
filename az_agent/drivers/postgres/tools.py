"""The client tools: finding ``pg_dump``/``pg_restore``, reading their versions, building their
command lines and environment, and running them as owned, always-reaped child processes."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from az_agent.drivers.errors import Misconfigured
from az_agent.drivers.postgres.base import PgVersion, describe_exit
from az_agent.drivers.postgres.config import PostgresSettings, SslMode

STDERR_TAIL_BYTES = 64 << 10
"""How much of a tool's stderr is kept: its last lines say why it failed."""

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_VERSION_TIMEOUT = 30.0

# libpq variables we set ourselves, plus those that could silently redirect a connection.
_OVERRIDDEN_ENV = frozenset(
    {
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGSSLMODE",
        "PGCONNECT_TIMEOUT",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGAPPNAME",
    }
)


@dataclass(frozen=True, slots=True)
class ConnectionParams:
    """Where and as whom to connect; shared by asyncpg and the client tools."""

    host: str
    port: int
    user: str
    password: SecretStr | None
    sslmode: SslMode
    connect_timeout: float

    @classmethod
    def from_settings(
        cls, settings: PostgresSettings, password: SecretStr | None
    ) -> ConnectionParams:
        return cls(
            settings.host,
            settings.port,
            settings.user,
            password,
            settings.sslmode,
            settings.connect_timeout_seconds,
        )

    @property
    def where(self) -> str:
        """``user@host:port`` for messages (never the password)."""
        return f"{self.user}@{self.host}:{self.port}"

    def tool_env(self, database: str, inherited: Mapping[str, str]) -> dict[str, str]:
        """The child's environment: libpq variables name the target, so no database name is
        ever parsed as a connection string and the password stays off the command line."""
        env = {k: v for k, v in inherited.items() if k not in _OVERRIDDEN_ENV}
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGDATABASE=database,
            PGSSLMODE=self.sslmode,
            PGCONNECT_TIMEOUT=str(max(2, math.ceil(self.connect_timeout))),
            PGAPPNAME="az-agent",
        )
        if self.password is not None:
            env["PGPASSWORD"] = self.password.get_secret_value()
        return env


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    path: str
    version: PgVersion


def find_tool(name: str, bin_dir: str) -> str:
    """Absolute path of ``name`` in ``bin_dir`` (or on PATH when empty); ``Misconfigured``."""
    if bin_dir:
        candidate = Path(bin_dir) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        raise Misconfigured(f"{name} not found in postgres.binDir {bin_dir}")
    found = shutil.which(name)
    if found is None:
        raise Misconfigured(
            f"{name} not found on PATH; install the PostgreSQL client tools or set postgres.binDir"
        )
    return found


def parse_tool_version(output: str) -> PgVersion:
    """``pg_dump (PostgreSQL) 15.18 (Debian ...)`` -> 150018; 9.6.24 -> 90624."""
    match = _VERSION.search(output)
    if match is None:
        raise ValueError(f"no PostgreSQL version in {output.strip()[:200]!r}")
    major, minor, patch = (int(part or 0) for part in match.groups())
    if major >= 10:
        num = major * 10000 + minor
        text = f"{major}.{minor}"
    else:
        num = major * 10000 + minor * 100 + patch
        text = f"{major}.{minor}.{patch}"
    return PgVersion(num, text)


async def tool_version(name: str, path: str) -> Tool:
    """Run ``<tool> --version``; ``Misconfigured`` when it fails or prints no version."""
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise Misconfigured(f"{name} at {path} cannot be run: {exc.strerror}") from exc
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), _VERSION_TIMEOUT)
    except TimeoutError as exc:
        raise Misconfigured(f"{name} --version did not answer in {_VERSION_TIMEOUT:.0f}s") from exc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    text = output.decode(errors="replace")
    returncode = proc.returncode if proc.returncode is not None else -9
    if returncode != 0:
        raise Misconfigured(
            f"{name} --version {describe_exit(returncode)}: {' '.join(text.split())}"
        )
    try:
        return Tool(name, path, parse_tool_version(text))
    except ValueError as exc:
        raise Misconfigured(f"{name} at {path}: {exc}") from exc


def dump_args(pg_dump: str, settings: PostgresSettings, database: str) -> list[str]:
    """``pg_dump`` in custom format; excluded tables keep their definitions, lose their rows.

    ``--exclude-table-data`` rather than ``-T``: a restored application still finds every
    table it expects (and every foreign key still has its target), only without the rows
    that were declared not worth backing up.
    """
    args = [pg_dump, "--format=custom", f"--compress={settings.dump_compression}", "--no-password"]
    args += [f"--exclude-table-data={p}" for p in settings.exclude_tables.get(database, [])]
    return args


def restore_args(pg_restore: str, scratch: str) -> list[str]:
    """``pg_restore`` of stdin into ``scratch``; the name goes through a conninfo string so
    that characters such as ``=`` in it are never misread."""
    return [
        pg_restore,
        "--no-owner",
        "--exit-on-error",
        "--clean",
        "--if-exists",
        "--no-password",
        f"--dbname=dbname={conninfo_quote(scratch)}",
    ]


def conninfo_quote(value: str) -> str:
    """Quote a value for a libpq ``key=value`` connection string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Child:
    """A running tool whose stderr tail is collected by a task this object owns."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._stderr = bytearray()
        assert proc.stderr is not None
        self._stderr_task = asyncio.create_task(self._collect(proc.stderr))

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(1 << 16):
            self._stderr += chunk
            if len(self._stderr) > STDERR_TAIL_BYTES:
                del self._stderr[:-STDERR_TAIL_BYTES]

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self.proc.stdin is not None
        return self.proc.stdin

    async def finish(self) -> tuple[int, str]:
        """Wait for the exit; its code and the tail of its stderr."""
        returncode = await self.proc.wait()
        await self._stderr_task
        return returncode, self._stderr.decode(errors="replace")

    async def reap(self) -> None:
        """Kill the child if it still runs, then collect it and close every pipe."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
            with contextlib.suppress(OSError):
                await self.proc.stdin.wait_closed()
        if self.proc.stdout is not None:
            while await self.proc.stdout.read(1 << 16):
                pass
        await self.proc.wait()
        await self._stderr_task


@asynccontextmanager
async def spawn(args: Sequence[str], env: Mapping[str, str], *, feed: bool) -> AsyncIterator[Child]:
    """Start a tool; on leaving, however that happens, it is killed if still running and reaped.

    ``feed=True`` gives it a stdin pipe and discards its stdout (``pg_restore``); otherwise
    stdin is empty and stdout is a pipe (``pg_dump``).
    """
    pipe = asyncio.subprocess.PIPE
    devnull = asyncio.subprocess.DEVNULL
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=pipe if feed else devnull,
            stdout=devnull if feed else pipe,
            stderr=pipe,
            env=dict(env),
        )
    except OSError as exc:
        raise Misconfigured(f"cannot run {args[0]}: {exc.strerror}") from exc
    child = Child(proc)
    try:
        yield child
    finally:
        await child.reap()
