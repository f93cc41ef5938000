"""Pure pieces of the PostgreSQL driver: versions, command lines, names, error translation."""

from __future__ import annotations

import stat
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from az_agent.drivers.errors import (
    DriverError,
    Misconfigured,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from az_agent.drivers.postgres.base import PgVersion, ToolFailed, describe_exit
from az_agent.drivers.postgres.config import PostgresSettings
from az_agent.drivers.postgres.dumper import aux_name
from az_agent.drivers.postgres.sql import translate
from az_agent.drivers.postgres.tools import (
    ConnectionParams,
    conninfo_quote,
    dump_args,
    find_tool,
    parse_tool_version,
    restore_args,
)


@pytest.mark.parametrize(
    ("output", "num", "text", "major"),
    [
        ("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", 150018, "15.18", (15,)),
        ("pg_restore (PostgreSQL) 9.6.24\n", 90624, "9.6.24", (9, 6)),
        ("pg_dump (PostgreSQL) 17beta1\n", 170000, "17.0", (17,)),
        ("pg_dump (PostgreSQL) 10.23\n", 100023, "10.23", (10,)),
    ],
)
def test_tool_versions(output: str, num: int, text: str, major: tuple[int, ...]) -> None:
    version = parse_tool_version(output)
    assert (version.num, version.text, version.major) == (num, text, major)


def test_majors_order_across_the_old_numbering() -> None:
    assert PgVersion(90624, "9.6.24").major < PgVersion(100000, "10.0").major
    assert PgVersion(140011, "14.11").major < PgVersion(150002, "15.2").major
    assert PgVersion(150002, "15.2").major == PgVersion(150018, "15.18").major
    with pytest.raises(ValueError, match="no PostgreSQL version"):
        parse_tool_version("bash: pg_dump: command not found")


def test_dump_arguments_use_custom_format_and_keep_excluded_definitions() -> None:
    settings = PostgresSettings.model_validate(
        {"databases": ["cfg"], "excludeTables": {"cfg": ["public.audit_*", "x.y"]}}
    )
    assert dump_args("/bin/pg_dump", settings, "cfg") == [
        "/bin/pg_dump",
        "--format=custom",
        "--compress=6",
        "--no-password",
        "--exclude-table-data=public.audit_*",
        "--exclude-table-data=x.y",
    ]
    assert "--exclude-table-data" not in " ".join(dump_args("pg_dump", settings, "other"))


def test_restore_arguments_quote_the_database_as_conninfo() -> None:
    args = restore_args("pg_restore", "we'ird db=x")
    assert args[-1] == r"--dbname=dbname='we\'ird db=x'"
    assert {"--no-owner", "--exit-on-error", "--clean", "--if-exists"} <= set(args)
    assert conninfo_quote("a\\b") == r"'a\\b'"


def test_tool_environment_names_the_target_and_hides_nothing_else() -> None:
    params = ConnectionParams("db.local", 6543, "agent", SecretStr("pw"), "require", 0.5)
    inherited = {"PATH": "/bin", "PGDATABASE": "wrong", "PGSERVICE": "x", "PGSSLROOTCERT": "/ca"}
    env = params.tool_env("configdb", inherited)
    assert env["PGDATABASE"] == "configdb"
    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"]) == ("db.local", "6543", "agent")
    assert (env["PGPASSWORD"], env["PGSSLMODE"], env["PGCONNECT_TIMEOUT"]) == ("pw", "require", "2")
    assert "PGSERVICE" not in env
    assert env["PGSSLROOTCERT"] == "/ca"
    assert env["PATH"] == "/bin"
    no_password = ConnectionParams("h", 1, "u", None, "disable", 10)
    assert "PGPASSWORD" not in no_password.tool_env("d", {"PGPASSWORD": "stale"})
    assert "pw" not in params.where


def test_find_tool(tmp_path: Path) -> None:
    with pytest.raises(Misconfigured, match=r"pg_dump not found in postgres\.binDir"):
        find_tool("pg_dump", str(tmp_path))
    tool = tmp_path / "pg_dump"
    tool.write_text("#!/bin/sh\n")
    with pytest.raises(Misconfigured):
        find_tool("pg_dump", str(tmp_path))  # not executable
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    assert find_tool("pg_dump", str(tmp_path)) == str(tool)


@pytest.mark.parametrize("database", ["configdb", "d" * 63, "é" * 31, 'we"ird'])
def test_scratch_names_fit_and_stay_distinct(database: str) -> None:
    for tag in ("restore", "old"):
        name = aux_name(database, tag) + "0123abcd"
        assert len(name.encode()) <= 63
        assert name.endswith(f"__az_{tag}_0123abcd")
    assert aux_name("d" * 63, "old") != aux_name("d" * 62 + "e", "old")
    assert aux_name("configdb", "restore") == "configdb__az_restore_"


def test_tool_failure_is_one_line_with_the_stderr_tail() -> None:
    stderr = "pg_dump: error: query failed\npg_dump: detail: permission denied for table t\n"
    error = ToolFailed("dump of 'cfg' to k", "pg_dump", 1, stderr)
    assert str(error) == (
        "dump of 'cfg' to k: pg_dump exited with status 1: pg_dump: error: query failed | "
        "pg_dump: detail: permission denied for table t"
    )
    long = ToolFailed("a", "pg_restore", -9, "x" * 5000)
    assert "was killed by SIGKILL" in str(long)
    assert len(str(long)) < 1600
    assert long.stderr == "x" * 5000
    assert describe_exit(-200) == "was killed by signal 200"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (asyncpg.exceptions.InvalidPasswordError("password authentication failed"), Misconfigured),
        (asyncpg.exceptions.InvalidCatalogNameError('database "x" does not exist'), NotFound),
        (asyncpg.exceptions.InsufficientPrivilegeError("permission denied"), PermissionDenied),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), Unavailable),
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting"), Unavailable),
        (asyncpg.exceptions.TooManyConnectionsError("too many clients"), Unavailable),
        (asyncpg.exceptions.SyntaxOrAccessError("syntax error"), DriverError),
        (asyncpg.exceptions.ClientConfigurationError("bad sslmode"), Misconfigured),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), Unavailable),
        (ConnectionRefusedError(111, "Connect call failed"), Unavailable),
        (TimeoutError(), Unavailable),
    ],
)
def test_translation_of_driver_errors(error: BaseException, kind: type[DriverError]) -> None:
    translated = translate("postgres u@h:1/db", error)
    assert type(translated) is kind
    assert str(translated).startswith("postgres u@h:1/db: ")
    assert "\n" not in str(translated)
