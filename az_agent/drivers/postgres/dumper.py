"""The :class:`PostgresDumper` of a real server: ``pg_dump``/``pg_restore`` plus ``asyncpg``.

Dump: ``pg_dump -Fc`` runs as a child process whose stdout is the body of one streamed
``ObjectStore.put``; the bytes are hashed on the way and the tool's exit code is checked before
the stream ends, so a failed dump makes the upload itself fail instead of completing a
truncated object.

Restore: the object is streamed into ``pg_restore`` restoring a scratch database
``<db>__az_restore_<n>`` while its bytes are hashed; only when the tool exited 0 and the bytes
match the log's record is the target swapped out (new sessions refused, old ones ended, two
renames in one transaction, the old database dropped). Leftovers of a crashed restore are
dropped by the next one.

Shadows (warm standby): the same restore into ``<db>__az_shadow``, whose scratch database is
labelled with the dump (``COMMENT ON DATABASE``, JSON) and closed to connections before it takes
the shadow's name; an activation later swaps the shadow in by renaming instead of restoring.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pydantic import SecretStr

from az_agent.drivers.errors import CorruptObject, DriverError, Misconfigured, NotFound
from az_agent.drivers.postgres import sql
from az_agent.drivers.postgres.base import (
    DumpResult,
    PgVersion,
    PostgresDumper,
    PostgresVersions,
    RestoreResult,
    ShadowLabel,
    ToolFailed,
)
from az_agent.drivers.postgres.config import MAX_NAME_BYTES, PostgresSettings
from az_agent.drivers.postgres.tools import (
    Child,
    ConnectionParams,
    Tool,
    dump_args,
    find_tool,
    restore_args,
    spawn,
    tool_version,
)
from az_agent.drivers.storage.base import ObjectInfo, ObjectReader, ObjectStore

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
DEFAULT_EXACT_COUNT_MAX_BYTES = 256 << 20
_SESSION_END_TIMEOUT = 30.0
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_SHADOW_SUFFIX = "__az_shadow"
_LABEL_PREFIX = "az-agent shadow "


def _utcnow() -> datetime:
    return datetime.now(UTC)


def aux_name(database: str, tag: str) -> str:
    """``<db>__az_<tag>_``: the prefix of the scratch/aside databases of ``database``.

    Shortened with a hash of the full name when it would pass PostgreSQL's 63-byte limit
    (which would otherwise truncate it silently and could make two names collide).
    """
    suffix = f"__az_{tag}_"
    room = MAX_NAME_BYTES - len(suffix) - 8  # 8 bytes left for the <n> that follows
    head = database
    if len(database.encode()) > room:
        short = database.encode()[: room - 9].decode(errors="ignore")
        head = f"{short}_{hashlib.sha256(database.encode()).hexdigest()[:8]}"
    return head + suffix


def shadow_name(database: str) -> str:
    """``<db>__az_shadow``, the warm standby's copy of ``database``; a long name is cut and
    given a hash of the full one, so that the result stays within 63 bytes and unique."""
    name = database + _SHADOW_SUFFIX
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    room = MAX_NAME_BYTES - len(_SHADOW_SUFFIX) - 9
    short = database.encode()[:room].decode(errors="ignore")
    return f"{short}_{hashlib.sha256(database.encode()).hexdigest()[:8]}{_SHADOW_SUFFIX}"


def encode_label(label: ShadowLabel) -> str:
    """The comment that marks a database as holding a dump (prefixed, so that no comment an
    operator wrote is ever mistaken for one)."""
    body: dict[str, Any] = {
        "key": label.key,
        "sha256": label.sha256,
        "size": label.size,
        "restoredAt": label.restored_at.isoformat(),
        "pgRestoreVersion": label.pg_restore_version.text,
        "pgRestoreVersionNum": label.pg_restore_version.num,
        "tables": label.tables,
        "rows": label.rows,
        "rowsExact": label.rows_exact,
        "objects": dict(label.objects),
    }
    if label.swapped_in_by is not None:
        body["swappedInBy"] = label.swapped_in_by
    return _LABEL_PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":"))


def decode_label(text: str | None) -> ShadowLabel | None:
    """The label in a database comment, or None for anything else (never guess)."""
    if text is None or not text.startswith(_LABEL_PREFIX):
        return None
    try:
        body = json.loads(text[len(_LABEL_PREFIX) :])
        swapped = body.get("swappedInBy")
        return ShadowLabel(
            key=str(body["key"]),
            sha256=str(body["sha256"]),
            size=int(body["size"]),
            restored_at=datetime.fromisoformat(body["restoredAt"]),
            pg_restore_version=PgVersion(
                int(body["pgRestoreVersionNum"]), str(body["pgRestoreVersion"])
            ),
            tables=int(body["tables"]),
            rows=int(body["rows"]),
            rows_exact=bool(body["rowsExact"]),
            objects={str(k): int(v) for k, v in dict(body["objects"]).items()},
            swapped_in_by=None if swapped is None else str(swapped),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring a malformed shadow label: %s", exc)
        return None


@dataclass
class _DumpStream:
    """The body of the upload: pg_dump's stdout, hashed, ending only if pg_dump succeeded."""

    child: Child
    action: str
    size: int = 0
    failure: ToolFailed | None = None
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        while chunk := await self.child.stdout.read(CHUNK_SIZE):
            self._sha.update(chunk)
            self.size += len(chunk)
            yield chunk
        returncode, stderr = await self.child.finish()
        if returncode != 0:
            self.failure = ToolFailed(self.action, "pg_dump", returncode, stderr)
            raise self.failure

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class PgDumper(PostgresDumper):
    """Dumps and restores the databases of the server named by ``settings``."""

    def __init__(
        self,
        settings: PostgresSettings,
        password: SecretStr | None,
        *,
        exact_count_max_bytes: int = DEFAULT_EXACT_COUNT_MAX_BYTES,
        clock: Callable[[], datetime] = _utcnow,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._params = ConnectionParams.from_settings(settings, password)
        self._exact_count_max_bytes = exact_count_max_bytes
        self._clock = clock
        self._environ = dict(os.environ if environ is None else environ)
        self._tools: tuple[Tool, Tool] | None = None
        self._restore_locks: dict[str, asyncio.Lock] = {}

    # -- discovery and checks ---------------------------------------------------------------

    async def _discover(self) -> tuple[Tool, Tool]:
        bin_dir = self._settings.bin_dir
        dump_path = await asyncio.to_thread(find_tool, "pg_dump", bin_dir)
        restore_path = await asyncio.to_thread(find_tool, "pg_restore", bin_dir)
        self._tools = (
            await tool_version("pg_dump", dump_path),
            await tool_version("pg_restore", restore_path),
        )
        return self._tools

    async def _ensure_tools(self) -> tuple[Tool, Tool]:
        return self._tools if self._tools is not None else await self._discover()

    def _connect(self, database: str) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return sql.connection(self._params, database)

    def _admin(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return self._connect(self._settings.maintenance_database)

    async def check(self) -> PostgresVersions:
        pg_dump, pg_restore = await self._discover()
        try:
            async with self._admin() as admin:
                server = await sql.server_version(admin)
                may_create = await sql.can_create_databases(admin)
        except NotFound as exc:
            raise Misconfigured(f"{exc} (set postgres.maintenanceDatabase)") from exc
        for tool in (pg_dump, pg_restore):
            if tool.version.major < server.major:
                raise Misconfigured(
                    f"{tool.name} {tool.version.text} ({tool.path}) is older than the "
                    f"PostgreSQL {server.text} server at {self._params.where}: install client "
                    f"tools >= {server.major_text} or point postgres.binDir at them"
                )
        if not may_create:
            raise Misconfigured(
                f"role {self._params.user!r} at {self._params.where} may not create databases, "
                "which restores need (grant CREATEDB)"
            )
        return PostgresVersions(pg_dump.version, pg_restore.version, server)

    async def ping(self) -> None:
        async with self._admin() as admin:
            await admin.fetchval("SELECT 1")

    async def close(self) -> None:
        return None

    # -- dump -------------------------------------------------------------------------------

    async def dump(self, database: str, store: ObjectStore, key: str) -> DumpResult:
        pg_dump, _ = await self._ensure_tools()
        async with self._connect(database) as conn:
            server = await sql.server_version(conn)
        started = self._clock()
        action = f"dump of {database!r} to {key}"
        args = dump_args(pg_dump.path, self._settings, database)
        async with spawn(args, self._params.tool_env(database, self._environ), feed=False) as child:
            stream = _DumpStream(child, action)
            info = await self._upload(stream, store, key)
        if info.size != stream.size or info.sha256 not in (None, stream.hexdigest()):
            await self._forget(store, key)
            raise CorruptObject(
                f"{action}: the store recorded {info.size} bytes / {info.sha256}, "
                f"pg_dump wrote {stream.size} / {stream.hexdigest()}"
            )
        result = DumpResult(
            database=database,
            key=key,
            size=stream.size,
            sha256=stream.hexdigest(),
            object_version=info.version,
            server_version=server,
            pg_dump_version=pg_dump.version,
            started_at=started,
            finished_at=self._clock(),
            excluded_table_data=tuple(self._settings.exclude_tables.get(database, [])),
            compression=self._settings.dump_compression,
        )
        log.info("dumped %s: %d bytes to %s", database, result.size, key)
        return result

    async def _upload(self, stream: _DumpStream, store: ObjectStore, key: str) -> ObjectInfo:
        """``store.put`` of the stream; a failed tool wins over the upload error it caused."""
        try:
            async with aclosing(stream.chunks()) as body:
                return await store.put(key, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._forget(store, key)
            if stream.failure is not None and exc is not stream.failure:
                raise stream.failure from exc
            raise

    async def _forget(self, store: ObjectStore, key: str) -> None:
        """Best-effort delete of an object no log entry will reference (else swept later)."""
        try:
            await store.delete(key)
        except (DriverError, ValueError) as exc:
            log.warning("could not delete orphan dump %s: %s", key, exc)

    # -- restore ----------------------------------------------------------------------------

    async def restore(
        self,
        database: str,
        store: ObjectStore,
        key: str,
        expected_sha256: str,
        expected_size: int,
    ) -> RestoreResult:
        return await self._restore(
            database, store, key, expected_sha256, expected_size, shadow=False
        )

    async def restore_shadow(
        self,
        database: str,
        store: ObjectStore,
        key: str,
        expected_sha256: str,
        expected_size: int,
    ) -> RestoreResult:
        return await self._restore(
            database, store, key, expected_sha256, expected_size, shadow=True
        )

    def _lock(self, database: str) -> asyncio.Lock:
        """One lock per database for its restores, its shadow's and the swap: they rename the
        same names, so they never interleave within this process."""
        if database == self._settings.maintenance_database:
            raise Misconfigured(f"cannot restore over the maintenance database {database!r}")
        return self._restore_locks.setdefault(database, asyncio.Lock())

    async def _restore(
        self,
        database: str,
        store: ObjectStore,
        key: str,
        expected_sha256: str,
        expected_size: int,
        *,
        shadow: bool,
    ) -> RestoreResult:
        if not _SHA256_HEX.match(expected_sha256):
            raise ValueError(f"expected_sha256 must be 64 lowercase hex digits: {expected_sha256}")
        target = shadow_name(database) if shadow else database
        async with self._lock(database):
            _, pg_restore = await self._ensure_tools()
            started = self._clock()
            async with store.open(key, chunk_size=CHUNK_SIZE) as reader:
                _check_recorded(reader.info, expected_sha256, expected_size)
                async with self._admin() as admin:
                    server = await sql.server_version(admin)
                    template: sql.DatabaseProps | None = None
                    seal: _Seal | None = None
                    if shadow:
                        template = await sql.database_props(admin, database)
                        dumped = ShadowLabel(
                            key=key,
                            sha256=expected_sha256,
                            size=expected_size,
                            restored_at=started,
                            pg_restore_version=pg_restore.version,
                            tables=0,
                            rows=0,
                            rows_exact=False,
                        )
                        seal = _labeller(admin, dumped)
                    outcome = await self._restore_swap(
                        admin,
                        server,
                        pg_restore,
                        target,
                        reader,
                        expected_sha256,
                        template=template,
                        seal=seal,
                    )
        replaced, counted = outcome
        result = RestoreResult(
            database=target,
            key=key,
            size=expected_size,
            sha256=expected_sha256,
            server_version=server,
            pg_restore_version=pg_restore.version,
            started_at=started,
            finished_at=self._clock(),
            replaced_existing=replaced,
            tables=counted.tables,
            rows=counted.rows,
            rows_exact=counted.rows_exact,
            objects=counted.objects,
        )
        log.info(
            "restored %s from %s: %d tables, %d rows", target, key, counted.tables, counted.rows
        )
        return result

    async def _restore_swap(
        self,
        admin: asyncpg.Connection,
        server: PgVersion,
        pg_restore: Tool,
        database: str,
        reader: ObjectReader,
        expected_sha256: str,
        *,
        template: sql.DatabaseProps | None = None,
        seal: _Seal | None = None,
    ) -> tuple[bool, sql.Census]:
        """Restore into a scratch database (owner and locale of ``template``, else of
        ``database``), pass it to ``seal`` once complete, then rename it to ``database``."""
        like = await sql.database_props(admin, database)
        await self._sweep(admin, server, database, target_exists=like is not None)
        scratch = aux_name(database, "restore") + secrets.token_hex(4)
        await sql.create_database(admin, scratch, template or like)
        try:
            await self._pg_restore(pg_restore, database, scratch, reader, expected_sha256)
            async with self._connect(scratch) as conn:
                counted = await sql.census(conn, self._exact_count_max_bytes)
            if seal is not None:
                await seal(scratch, counted)
            replaced = await self._swap_in(admin, server, database, scratch, like)
        except BaseException:
            await _quietly(sql.drop_database(admin, scratch, server), f"drop {scratch}")
            raise
        return replaced, counted

    async def _sweep(
        self, admin: asyncpg.Connection, server: PgVersion, database: str, target_exists: bool
    ) -> None:
        """Drop scratch databases a crashed restore left; aside copies only once the target
        exists again (with transactional renames it always does, but never guess)."""
        stale = await sql.databases_with_prefix(admin, aux_name(database, "restore"))
        if target_exists:
            stale += await sql.databases_with_prefix(admin, aux_name(database, "old"))
        for name in stale:
            log.warning("dropping %s, left by an interrupted restore of %s", name, database)
            await sql.drop_database(admin, name, server)

    async def _pg_restore(
        self, tool: Tool, database: str, scratch: str, reader: ObjectReader, expected_sha256: str
    ) -> None:
        action = f"restore of {database!r} from {reader.info.key}"
        env = self._params.tool_env(scratch, self._environ)
        async with spawn(restore_args(tool.path, scratch), env, feed=True) as child:
            await _feed(child, reader, expected_sha256, action)
            returncode, stderr = await child.finish()
        if returncode != 0:
            raise ToolFailed(action, "pg_restore", returncode, stderr)

    async def _swap_in(
        self,
        admin: asyncpg.Connection,
        server: PgVersion,
        database: str,
        scratch: str,
        like: sql.DatabaseProps | None,
    ) -> bool:
        """Put ``scratch`` in the place of ``database``; whether one was replaced."""
        if like is None:
            await sql.rename_database(admin, scratch, database)
            return False
        aside = aux_name(database, "old") + secrets.token_hex(4)
        await sql.set_allow_connections(admin, database, False)
        try:
            ended = await sql.terminate_sessions(admin, database, _SESSION_END_TIMEOUT)
            await sql.swap_databases(admin, database, scratch, aside)
        except BaseException:
            reopen = sql.set_allow_connections(admin, database, like.allow_connections)
            await _quietly(reopen, f"re-allow connections to {database}")
            raise
        if not like.allow_connections:
            await sql.set_allow_connections(admin, database, False)
        log.info("swapped restored %s in (%d session(s) ended)", database, ended)
        await _quietly(sql.drop_database(admin, aside, server), f"drop {aside}")
        return True

    # -- shadows ----------------------------------------------------------------------------

    async def shadow(self, database: str) -> ShadowLabel | None:
        async with self._admin() as admin:
            return decode_label(await sql.database_comment(admin, shadow_name(database)))

    async def swap_in_shadow(
        self, database: str, key: str, expected_sha256: str, tag: str
    ) -> RestoreResult | None:
        shadow = shadow_name(database)
        cleanup = f"drop the database the swap of {database} set aside"
        async with self._lock(database):
            started = self._clock()
            async with self._admin() as admin:
                server = await sql.server_version(admin)
                live = await sql.database_props(admin, database)
                held = decode_label(await sql.database_comment(admin, database))
                if (
                    live is not None
                    and held is not None
                    and held.swapped_in_by == tag
                    and held.holds(key, expected_sha256)
                ):
                    log.info("%s was swapped in by %s already", database, tag)
                    await _quietly(self._sweep(admin, server, database, True), cleanup)
                    return self._swapped(database, held, server, started, replaced=True)
                label = decode_label(await sql.database_comment(admin, shadow))
                if label is None or not label.holds(key, expected_sha256):
                    return None
                marked = replace(label, swapped_in_by=tag)
                ended = await self._swap_shadow(admin, database, shadow, live, marked)
                log.info("swapped the shadow of %s in (%d session(s) ended)", database, ended)
                await _quietly(self._sweep(admin, server, database, True), cleanup)
        return self._swapped(database, marked, server, started, replaced=live is not None)

    async def _swap_shadow(
        self,
        admin: asyncpg.Connection,
        database: str,
        shadow: str,
        live: sql.DatabaseProps | None,
        marked: ShadowLabel,
    ) -> int:
        """End the sessions on ``database`` (refusing new ones), then in one transaction: the
        live database aside, the shadow to its name, open to connections, tagged ``marked``."""
        ended = 0
        if live is not None:
            await sql.set_allow_connections(admin, database, False)
        try:
            if live is not None:
                ended = await sql.terminate_sessions(admin, database, _SESSION_END_TIMEOUT)
            await sql.terminate_sessions(admin, shadow, _SESSION_END_TIMEOUT)
            async with admin.transaction():
                if live is not None:
                    aside = aux_name(database, "old") + secrets.token_hex(4)
                    await sql.rename_database(admin, database, aside)
                await sql.rename_database(admin, shadow, database)
                await sql.set_allow_connections(admin, database, True)
                await sql.comment_on_database(admin, database, encode_label(marked))
        except BaseException:
            if live is not None:
                reopen = sql.set_allow_connections(admin, database, live.allow_connections)
                await _quietly(reopen, f"re-allow connections to {database}")
            raise
        return ended

    def _swapped(
        self,
        database: str,
        label: ShadowLabel,
        server: PgVersion,
        started: datetime,
        *,
        replaced: bool,
    ) -> RestoreResult:
        return RestoreResult(
            database=database,
            key=label.key,
            size=label.size,
            sha256=label.sha256,
            server_version=server,
            pg_restore_version=label.pg_restore_version,
            started_at=started,
            finished_at=self._clock(),
            replaced_existing=replaced,
            tables=label.tables,
            rows=label.rows,
            rows_exact=label.rows_exact,
            objects=label.objects,
            shadow=True,
        )


_Seal = Callable[[str, sql.Census], Awaitable[None]]
"""Called with a restored scratch database and its census, before it takes the target's name."""


def _labeller(admin: asyncpg.Connection, dumped: ShadowLabel) -> _Seal:
    """The seal of a shadow: label the scratch with its dump (``dumped``) and census, close it
    to connections (nothing may write to the copy an activation will swap in). It runs only
    after the bytes matched the log's checksum and pg_restore succeeded."""

    async def seal(scratch: str, counted: sql.Census) -> None:
        label = replace(
            dumped,
            tables=counted.tables,
            rows=counted.rows,
            rows_exact=counted.rows_exact,
            objects=counted.objects,
        )
        await sql.comment_on_database(admin, scratch, encode_label(label))
        await sql.set_allow_connections(admin, scratch, False)

    return seal


def _check_recorded(info: ObjectInfo, expected_sha256: str, expected_size: int) -> None:
    """Refuse an object whose stored size or checksum already disagrees with the log."""
    if info.size != expected_size:
        raise CorruptObject(
            f"{info.key}: the store holds {info.size} bytes, the log recorded {expected_size}"
        )
    if info.sha256 is not None and info.sha256 != expected_sha256:
        raise CorruptObject(
            f"{info.key}: the store recorded SHA-256 {info.sha256}, the log {expected_sha256}"
        )


async def _feed(child: Child, reader: ObjectReader, expected_sha256: str, action: str) -> None:
    """Stream the object into the tool's stdin with backpressure, verifying every byte.

    The object is read to its end even when the tool stops reading early, because the
    checksum decides before the tool's exit code does: a corrupt dump is ``CorruptObject``.
    """
    digest = hashlib.sha256()
    size = 0
    accepting = True
    async for chunk in reader:
        digest.update(chunk)
        size += len(chunk)
        if size > reader.info.size:
            raise CorruptObject(f"{action}: more than the {reader.info.size} bytes recorded")
        if accepting:
            try:
                child.stdin.write(chunk)
                await child.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                accepting = False  # the tool stopped reading; its exit code will say why
    if size != reader.info.size or digest.hexdigest() != expected_sha256:
        raise CorruptObject(
            f"{action}: read {size} bytes with SHA-256 {digest.hexdigest()}, the log recorded "
            f"{reader.info.size} / {expected_sha256}"
        )
    child.stdin.close()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await child.stdin.wait_closed()


async def _quietly(step: Awaitable[object], what: str) -> None:
    """Await a clean-up step, logging its failure so that the original error is the one seen."""
    try:
        with sql.pg_errors(what):
            await step
    except DriverError as exc:
        log.warning("could not %s: %s", what, exc)
