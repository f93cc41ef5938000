"""What the agent asks the server through ``asyncpg``: versions, health, database life cycle
(create, rename, drop, end sessions, comments) and the census of a restored database.

asyncpg's exceptions are translated here, in :func:`pg_errors`, and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import asyncpg

from az_agent.drivers.errors import (
    DriverError,
    Misconfigured,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from az_agent.drivers.postgres.base import PgVersion
from az_agent.drivers.postgres.tools import ConnectionParams

_RETRYABLE_SQLSTATE_CLASSES = ("08", "40", "53", "57")
_USER_SCHEMAS = """
    n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""
_RELKINDS = {
    "r": "tables",
    "p": "partitioned tables",
    "v": "views",
    "m": "materialized views",
    "S": "sequences",
    "i": "indexes",
    "I": "partitioned indexes",
    "f": "foreign tables",
}


def one_line(text: str) -> str:
    return " ".join(text.split())


def translate(what: str, exc: BaseException) -> DriverError:
    """Our error for an asyncpg/socket failure; ``what`` says which operation, on which target."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        message = f"{what}: {one_line(str(exc))}"
        if state.startswith("28"):
            return Misconfigured(message)
        if state == "3D000":
            return NotFound(message)
        if state == "42501":
            return PermissionDenied(message)
        if state.startswith(_RETRYABLE_SQLSTATE_CLASSES):
            return Unavailable(message)
        return DriverError(message)
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return Misconfigured(f"{what}: {one_line(str(exc))}")
    reason = one_line(str(exc)) or type(exc).__name__
    return Unavailable(f"{what}: cannot reach the server: {reason}")


@contextmanager
def pg_errors(what: str) -> Iterator[None]:
    """Turn asyncpg, socket and timeout errors raised inside into our typed errors."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise translate(what, exc) from exc


@asynccontextmanager
async def connection(params: ConnectionParams, database: str) -> AsyncIterator[asyncpg.Connection]:
    """A short-lived connection; dumps and restores are rare, a pool would only hold sockets."""
    what = f"postgres {params.where}/{database}"
    with pg_errors(what):
        conn = await asyncpg.connect(
            host=params.host,
            port=params.port,
            user=params.user,
            password=None if params.password is None else params.password.get_secret_value(),
            database=database,
            ssl=params.sslmode,
            timeout=params.connect_timeout,
            server_settings={"application_name": "az-agent"},
        )
    try:
        with pg_errors(what):
            yield conn
    finally:
        with pg_errors(what):
            await conn.close(timeout=params.connect_timeout)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def server_version(conn: asyncpg.Connection) -> PgVersion:
    num = int(await conn.fetchval("SHOW server_version_num"))
    text = str(await conn.fetchval("SHOW server_version")).split()[0]
    return PgVersion(num, text)


async def can_create_databases(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
        )
    )


@dataclass(frozen=True, slots=True)
class DatabaseProps:
    """What a replacement must keep of the database it replaces."""

    owner: str
    encoding: str
    collate: str
    ctype: str
    allow_connections: bool
    icu_locale: str | None


async def database_props(conn: asyncpg.Connection, name: str) -> DatabaseProps | None:
    """Owner, encoding and locale of ``name``, or ``None`` when it does not exist.

    The row goes through ``to_jsonb`` because the ICU column changed name across versions.
    """
    row = await conn.fetchrow(
        """SELECT pg_get_userbyid(d.datdba) AS owner, pg_encoding_to_char(d.encoding) AS enc,
                  to_jsonb(d) AS raw
           FROM pg_database d WHERE d.datname = $1""",
        name,
    )
    if row is None:
        return None
    raw = json.loads(row["raw"])
    icu = raw.get("daticulocale") or raw.get("datlocale")
    return DatabaseProps(
        owner=row["owner"],
        encoding=row["enc"],
        collate=raw["datcollate"],
        ctype=raw["datctype"],
        allow_connections=bool(raw["datallowconn"]),
        icu_locale=icu if raw.get("datlocprovider") == "i" else None,
    )


async def create_database(conn: asyncpg.Connection, name: str, like: DatabaseProps | None) -> None:
    """An empty database from ``template0``, with the owner and locale of ``like``."""
    sql = f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0"
    if like is not None:
        if like.owner != await conn.fetchval("SELECT current_user"):
            sql += f" OWNER {quote_ident(like.owner)}"
        sql += f" ENCODING {quote_literal(like.encoding)}"
        sql += f" LC_COLLATE {quote_literal(like.collate)} LC_CTYPE {quote_literal(like.ctype)}"
        if like.icu_locale is not None:
            sql += f" LOCALE_PROVIDER icu ICU_LOCALE {quote_literal(like.icu_locale)}"
    await conn.execute(sql)


async def drop_database(conn: asyncpg.Connection, name: str, server: PgVersion) -> None:
    """Drop ``name`` if it exists, ending its sessions first."""
    if server.num >= 130000:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        return
    await terminate_sessions(conn, name, grace=10.0)
    await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")


async def set_allow_connections(conn: asyncpg.Connection, name: str, allow: bool) -> None:
    flag = "true" if allow else "false"
    await conn.execute(f"ALTER DATABASE {quote_ident(name)} WITH ALLOW_CONNECTIONS {flag}")


async def terminate_sessions(conn: asyncpg.Connection, name: str, grace: float) -> int:
    """End every other session on ``name`` and wait until they are gone; how many there were.

    ``Unavailable`` when some survive ``grace`` seconds (a backend stuck in I/O).
    """
    ended = 0
    deadline = time.monotonic() + grace
    query = """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE datname = $1 AND pid <> pg_backend_pid()"""
    while True:
        count = int(await conn.fetchval(query, name))
        if count == 0:
            return ended
        ended += count
        if time.monotonic() > deadline:
            raise Unavailable(f"{count} session(s) on database {name!r} did not end in {grace}s")
        await asyncio.sleep(0.05)


async def rename_database(conn: asyncpg.Connection, old: str, new: str) -> None:
    await conn.execute(f"ALTER DATABASE {quote_ident(old)} RENAME TO {quote_ident(new)}")


async def swap_databases(conn: asyncpg.Connection, target: str, scratch: str, aside: str) -> None:
    """In one transaction: ``target`` becomes ``aside`` and ``scratch`` becomes ``target``.

    Renames are transactional, so there is no moment without a database named ``target``.
    """
    async with conn.transaction():
        await rename_database(conn, target, aside)
        await rename_database(conn, scratch, target)


async def database_comment(conn: asyncpg.Connection, name: str) -> str | None:
    """The comment on database ``name`` (None: no comment, or no such database)."""
    text = await conn.fetchval(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", name
    )
    return None if text is None else str(text)


async def comment_on_database(conn: asyncpg.Connection, name: str, text: str) -> None:
    """Set the comment of ``name`` (transactional, so it can commit with renames)."""
    await conn.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(text)}")


async def databases_with_prefix(conn: asyncpg.Connection, prefix: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT datname FROM pg_database WHERE left(datname, length($1)) = $1 ORDER BY 1",
        prefix,
    )
    return [row["datname"] for row in rows]


@dataclass(frozen=True, slots=True)
class Census:
    """Objects and rows of a database, as reported after a restore."""

    objects: dict[str, int]
    tables: int
    rows: int
    rows_exact: bool


async def census(conn: asyncpg.Connection, exact_max_bytes: int) -> Census:
    """Count objects by kind, and rows: exactly when the database is at most
    ``exact_max_bytes``, else the estimate of a fresh ``ANALYZE`` (which a restored database
    wants anyway, as pg_restore leaves it without statistics)."""
    await conn.execute("ANALYZE")
    kinds = await conn.fetch(
        f"""SELECT c.relkind::text AS kind, count(*) AS n FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE {_USER_SCHEMAS} GROUP BY 1"""
    )
    objects = {_RELKINDS[r["kind"]]: int(r["n"]) for r in kinds if r["kind"] in _RELKINDS}
    objects["functions"] = int(
        await conn.fetchval(
            f"""SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE {_USER_SCHEMAS}"""
        )
    )
    tables = await conn.fetch(
        f"""SELECT c.oid::regclass::text AS name, greatest(c.reltuples, 0)::bigint AS estimate
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND {_USER_SCHEMAS}"""
    )
    size = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    exact = size <= exact_max_bytes
    rows = 0
    for table in tables:
        if exact:
            rows += int(await conn.fetchval(f"SELECT count(*) FROM ONLY {table['name']}"))
        else:
            rows += int(table["estimate"])
    return Census(objects, len(tables), rows, exact)
