"""A dump copied straight out of a ``file`` bucket is a plain pg_dump archive: ``pg_restore``
reads it without the agent."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from az_agent.drivers.postgres.dumper import PgDumper
from az_agent.drivers.storage.file import FileObjectStore
from tests.integration.postgres.helpers import connect, create_db, seeded
from tests.integration.postgres.schema import snapshot
from tests.servers.postgres import PG_BIN, PostgresServer


async def _pg_restore(server: PostgresServer, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(PG_BIN / "pg_restore"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PGPASSWORD": server.password},
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_a_dump_copied_out_of_a_file_bucket_restores_with_pg_restore(
    zone1: PostgresServer,
    zone2: PostgresServer,
    dumper1: PgDumper,
    file_store: FileObjectStore,
    tmp_path: Path,
    dbname: str,
) -> None:
    await seeded(zone1, dbname, 1)
    dump = await dumper1.dump(dbname, file_store, f"az1/postgres/{dbname}/dump-1.dump")
    copied = tmp_path / "copied.dump"
    await asyncio.to_thread(shutil.copyfile, tmp_path / "bucket" / dump.key, copied)

    listing = await _pg_restore(zone2, "--list", str(copied))
    assert " TABLE " in listing, listing

    target = f"{dbname}_copied"
    await create_db(zone2, target)
    where = ["--host", zone2.host, "--port", str(zone2.port), "--username", zone2.user]
    await _pg_restore(zone2, *where, "--no-owner", "--dbname", target, str(copied))
    async with connect(zone1, dbname) as source, connect(zone2, target) as restored:
        assert await snapshot(restored) == await snapshot(source)
