"""The PostgreSQL backup capability: what a dump and a restore promise, and what they return.

:class:`PostgresDumper` is the interface the agent's loops and ``/activate`` use; one
implementation (:mod:`az_agent.drivers.postgres.dumper`) drives ``pg_dump``/``pg_restore``
and ``asyncpg``. Errors are those of :mod:`az_agent.drivers.errors`, plus :class:`ToolFailed`
for a client tool that exited non-zero or died.
"""

from __future__ import annotations

import abc
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from az_agent.drivers.errors import DriverError
from az_agent.drivers.resource import AsyncResource
from az_agent.drivers.storage.base import ObjectStore

_MESSAGE_STDERR_CHARS = 1500


class ToolFailed(DriverError):
    """``pg_dump`` or ``pg_restore`` exited non-zero or was killed by a signal.

    ``stderr`` holds the tail of what the tool printed; the message carries it on one line.
    Whether a retry helps depends on the cause (a dropped connection: yes; a table the role may
    not read: no), so callers retry on their schedule rather than at once.
    """

    def __init__(self, action: str, tool: str, returncode: int, stderr: str) -> None:
        self.action = action
        self.tool = tool
        self.returncode = returncode
        self.stderr = stderr
        flat = " | ".join(line.strip() for line in stderr.splitlines() if line.strip())
        if len(flat) > _MESSAGE_STDERR_CHARS:
            flat = "..." + flat[-_MESSAGE_STDERR_CHARS:]
        super().__init__(f"{action}: {tool} {describe_exit(returncode)}: {flat or 'no output'}")


def describe_exit(returncode: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL``, as asyncio reports exit codes."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


@dataclass(frozen=True, slots=True)
class PgVersion:
    """A PostgreSQL version as ``server_version_num`` counts it (15.18 -> 150018)."""

    num: int
    text: str

    @property
    def major(self) -> tuple[int, ...]:
        """(15,) from 10 on, (9, 6) before: the unit pg_dump compatibility is defined in."""
        if self.num >= 100000:
            return (self.num // 10000,)
        return (self.num // 10000, self.num // 100 % 100)

    @property
    def major_text(self) -> str:
        return ".".join(str(part) for part in self.major)


@dataclass(frozen=True, slots=True)
class PostgresVersions:
    """What :meth:`PostgresDumper.check` found: the client tools and the server."""

    pg_dump: PgVersion
    pg_restore: PgVersion
    server: PgVersion


@dataclass(frozen=True, slots=True)
class DumpResult:
    """A durable dump: everything the commit-log entry records about it.

    ``started_at`` is taken just before pg_dump starts, and pg_dump takes its snapshot right
    away, so it is the point in time the dump represents (what ``latestTime`` compares with).
    """

    database: str
    key: str
    size: int
    sha256: str
    object_version: str
    server_version: PgVersion
    pg_dump_version: PgVersion
    started_at: datetime
    finished_at: datetime
    excluded_table_data: tuple[str, ...] = ()
    compression: int = 6

    def as_record(self) -> dict[str, Any]:
        """JSON-ready fields for a log entry (UTC timestamps in ISO 8601)."""
        return {
            "database": self.database,
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "objectVersion": self.object_version,
            "serverVersion": self.server_version.text,
            "serverVersionNum": self.server_version.num,
            "pgDumpVersion": self.pg_dump_version.text,
            "startedAt": self.started_at.isoformat(),
            "finishedAt": self.finished_at.isoformat(),
            "excludedTableData": list(self.excluded_table_data),
            "compression": self.compression,
        }


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """A finished restore. ``rows`` is exact (``count(*)`` per table) when ``rows_exact``,
    else the planner's estimate after ``ANALYZE`` (large databases)."""

    database: str
    key: str
    size: int
    sha256: str
    server_version: PgVersion
    pg_restore_version: PgVersion
    started_at: datetime
    finished_at: datetime
    replaced_existing: bool
    tables: int
    rows: int
    rows_exact: bool
    objects: Mapping[str, int] = field(default_factory=dict)
    shadow: bool = False
    """The warm standby's shadow database was swapped in: no ``pg_restore`` ran, ``rows`` and
    ``tables`` are those counted when the shadow was restored."""


@dataclass(frozen=True, slots=True)
class ShadowLabel:
    """Which dump a shadow database holds, recorded in the database itself (its comment), so a
    restarted agent knows without restoring again. Only a complete restore is labelled.

    ``swapped_in_by`` names the operation that swapped the shadow in: a resumed activation
    finding its own tag on the live database knows the swap already happened.
    """

    key: str
    sha256: str
    size: int
    restored_at: datetime
    pg_restore_version: PgVersion
    tables: int
    rows: int
    rows_exact: bool
    objects: Mapping[str, int] = field(default_factory=dict)
    swapped_in_by: str | None = None

    def holds(self, key: str, sha256: str) -> bool:
        return self.key == key and self.sha256 == sha256


class PostgresDumper(AsyncResource):
    """Dumps databases of one server into an object store, and restores them from it.

    Every method may raise ``Unavailable`` (server unreachable, retry later), ``Misconfigured``
    (authentication, missing tools), ``PermissionDenied`` and ``NotFound`` (no such database or
    object). Messages are single lines and never contain the password.
    """

    @abc.abstractmethod
    async def check(self) -> PostgresVersions:
        """Probe at start-up: the tools exist and are not older than the server's major
        version, the server answers and accepts the credentials, the role can create
        databases (restores need it). Raises with one line a human can act on."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Cheap health check: one round trip to the server."""

    @abc.abstractmethod
    async def dump(self, database: str, store: ObjectStore, key: str) -> DumpResult:
        """Stream a custom-format dump of ``database`` into ``store`` at ``key``.

        Memory stays flat: the tool's stdout goes straight into the store's streamed upload,
        hashed on the way. Returns only when the object is complete and its SHA-256 agrees
        with the store's. On any failure (``ToolFailed``, an upload error, cancellation) no
        result is returned, the child process is reaped, and the object is absent or an orphan
        (deleted best-effort) that no log entry references.
        """

    @abc.abstractmethod
    async def restore(
        self,
        database: str,
        store: ObjectStore,
        key: str,
        expected_sha256: str,
        expected_size: int,
    ) -> RestoreResult:
        """Replace ``database`` (created if missing) with the dump at ``key``.

        All or nothing: the dump is restored into a scratch database while its bytes are
        verified against ``expected_sha256``/``expected_size`` (the log's record); only when
        the tool succeeded and the bytes matched are other sessions on ``database`` ended and
        the scratch database swapped in by renaming. A mismatch raises ``CorruptObject`` and a
        failed tool ``ToolFailed``, in both cases with ``database`` untouched and no scratch
        database left behind.
        """

    @abc.abstractmethod
    async def shadow(self, database: str) -> ShadowLabel | None:
        """What the warm-standby shadow of ``database`` holds, or None (no shadow, or one
        without a valid label: never trust it)."""

    @abc.abstractmethod
    async def restore_shadow(
        self,
        database: str,
        store: ObjectStore,
        key: str,
        expected_sha256: str,
        expected_size: int,
    ) -> RestoreResult:
        """Like :meth:`restore`, into the shadow of ``database`` instead of ``database``.

        The scratch database is labelled (and closed to connections, so nothing writes to the
        copy) before it is renamed to the shadow's name: a failed or interrupted restore leaves
        the previous shadow, with its own label, or none. New shadows take the owner and locale
        of ``database`` when it exists, as a restore of it would.
        """

    @abc.abstractmethod
    async def swap_in_shadow(
        self, database: str, key: str, expected_sha256: str, tag: str
    ) -> RestoreResult | None:
        """Replace ``database`` with its shadow if the shadow holds that dump; None otherwise
        (nothing changed: restore instead).

        Sessions on ``database`` are ended and the renames (live aside, shadow to live) plus the
        label ``swapped_in_by=tag`` commit in one transaction. Called again with the same
        ``tag`` after that commit (a restarted operation), it finds the tag on ``database`` and
        returns the same kind of result without changing anything but leftovers.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release resources; the dumper cannot be used afterwards."""
