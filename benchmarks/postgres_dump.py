"""Dump-and-upload throughput of the PostgreSQL driver beside a baseline, restore time, memory.

    python -m benchmarks.postgres_dump [--size-mb 1000] [--store file|s3] [--compression 6]

Starts two throwaway PostgreSQL 15 servers (zone 1 and zone 2), fills a database of about
``--size-mb`` in zone 1, then measures in one run:

* baseline: ``pg_dump -Fc`` to a local file, then the same upload of that file to the store;
* streamed: :meth:`PgDumper.dump` (pg_dump's stdout straight into the store's upload);
* restore: :meth:`PgDumper.restore` of the streamed dump into zone 2 (scratch + swap);

and the peak resident memory of this process during each phase, sampled from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg
from pydantic import SecretStr

from az_agent.drivers.postgres.dumper import PgDumper
from az_agent.drivers.postgres.tools import ConnectionParams
from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.factory import open_object_store
from az_agent.drivers.storage.file import FileObjectStore
from benchmarks.memory import rss_bytes, sampled
from tests.servers.postgres import PostgresServer

T = TypeVar("T")
MB = 1_000_000
DATABASE = "benchdb"
_ROW_BYTES = 190  # heap bytes per generated row, measured on PostgreSQL 15


@dataclass
class Phase:
    name: str
    seconds: float
    rss_peak: int


async def measure(name: str, call: Callable[[], Awaitable[T]]) -> tuple[T, Phase]:
    async with sampled() as samples:
        start = time.perf_counter()
        result = await call()
        seconds = time.perf_counter() - start
    return result, Phase(name, seconds, max(samples))


async def fill(server: PostgresServer, size_mb: int) -> int:
    """Create and fill the database in ~64 MB statements; its size in bytes."""
    admin = await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, password=server.password
    )
    try:
        await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=DATABASE,
    )
    try:
        await conn.execute(
            "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, "
            "host text NOT NULL, level int NOT NULL, payload text NOT NULL)"
        )
        total_rows = size_mb * MB // _ROW_BYTES
        batch = 64 * MB // _ROW_BYTES
        for first in range(0, total_rows, batch):
            count = min(batch, total_rows - first)
            await conn.execute(
                """INSERT INTO events (at, host, level, payload)
                   SELECT timestamptz '2026-01-01' + g * interval '1 second', 'host-' || g % 97,
                          g % 5, md5(g::text) || ' ' || md5((g * 31)::text) || ' event text '
                          || repeat(chr(65 + (g % 26)::int), 24)
                   FROM generate_series($1::bigint, $2::bigint) g""",
                first,
                first + count - 1,
            )
        await conn.execute("VACUUM ANALYZE events")
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


async def file_chunks(path: Path, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(handle.read, chunk):
            yield data
    finally:
        await asyncio.to_thread(handle.close)


async def baseline(
    server: PostgresServer, store: ObjectStore, workdir: Path, level: int
) -> tuple[Phase, Phase, int]:
    """``pg_dump -Fc`` to a file, then the upload of that file: the two phases and the size."""
    params = ConnectionParams.from_settings(server.settings(), SecretStr(server.password))
    env = params.tool_env(DATABASE, {"PATH": "/usr/bin:/bin"})
    target = workdir / "baseline.dump"

    async def to_file() -> None:
        proc = await asyncio.create_subprocess_exec(
            str(server.bin_dir / "pg_dump"), "-Fc", f"-Z{level}", "-f", str(target), env=env
        )
        if await proc.wait() != 0:
            raise RuntimeError("baseline pg_dump failed")

    _, dumped = await measure("baseline: pg_dump -Fc to file", to_file)
    _, uploaded = await measure(
        "baseline: upload of the file",
        lambda: store.put("bench/baseline.dump", file_chunks(target)),
    )
    size = (await asyncio.to_thread(target.stat)).st_size
    await asyncio.to_thread(target.unlink)
    return dumped, uploaded, size


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="az-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def open_store(kind: str, workdir: Path) -> AsyncIterator[ObjectStore]:
    if kind == "file":
        async with FileObjectStore(workdir / "bucket") as store:
            yield store
        return
    from tests.servers.moto import MotoBackend

    backend = MotoBackend()
    await asyncio.to_thread(backend.start)
    try:
        settings, secrets = await backend.new_bucket()
        async with await open_object_store(settings, secrets) as store:
            yield store
    finally:
        await asyncio.to_thread(backend.stop)


async def run(options: argparse.Namespace) -> None:
    zone1, zone2 = PostgresServer("bench-az1"), PostgresServer("bench-az2")
    await asyncio.gather(asyncio.to_thread(zone1.start), asyncio.to_thread(zone2.start))
    try:
        with scratch_dir() as workdir:
            async with open_store(options.store, workdir) as store:
                await report(zone1, zone2, store, workdir, options)
    finally:
        await asyncio.gather(asyncio.to_thread(zone1.stop), asyncio.to_thread(zone2.stop))


def fastest(phases: list[Phase]) -> Phase:
    """The fastest round's time, the highest peak of all rounds."""
    best = min(phases, key=lambda phase: phase.seconds)
    return Phase(best.name, best.seconds, max(phase.rss_peak for phase in phases))


async def report(
    zone1: PostgresServer,
    zone2: PostgresServer,
    store: ObjectStore,
    workdir: Path,
    options: argparse.Namespace,
) -> None:
    start = time.perf_counter()
    db_bytes = await fill(zone1, options.size_mb)
    print(f"filled {DATABASE}: {db_bytes / MB:.0f} MB in {time.perf_counter() - start:.1f} s")
    settings = zone1.settings(databases=[DATABASE], dump_compression=options.compression)
    source = PgDumper(settings, SecretStr(zone1.password))
    target = PgDumper(zone2.settings(databases=[DATABASE]), SecretStr(zone2.password))
    idle_rss = rss_bytes()
    rounds: dict[str, list[Phase]] = {"file": [], "upload": [], "streamed": []}
    for _ in range(options.rounds):  # alternated, so that caches favour neither
        to_file, upload, base_size = await baseline(zone1, store, workdir, options.compression)
        dump, streamed = await measure(
            "streamed: PgDumper.dump", lambda: source.dump(DATABASE, store, "bench/streamed.dump")
        )
        for name, phase in (("file", to_file), ("upload", upload), ("streamed", streamed)):
            rounds[name].append(phase)
    restored, restore = await measure(
        "restore: PgDumper.restore",
        lambda: target.restore(DATABASE, store, dump.key, dump.sha256, dump.size),
    )
    print(
        f"store={options.store} compression={options.compression} rounds={options.rounds} "
        f"dump={dump.size / MB:.1f} MB (baseline file {base_size / MB:.1f} MB)"
    )
    phases = [fastest(rounds["file"]), fastest(rounds["upload"]), fastest(rounds["streamed"])]
    print_phases([*phases, restore], db_bytes, dump.size)
    to_file, upload, streamed = phases
    base_total = to_file.seconds + upload.seconds
    print(f"baseline total (dump to file + upload): {base_total:.2f} s")
    print(f"ratio streamed / baseline total: {streamed.seconds / base_total:.2f}")
    print(f"ratio streamed / baseline pg_dump alone: {streamed.seconds / to_file.seconds:.2f}")
    print(f"ratio restore / streamed dump: {restore.seconds / streamed.seconds:.2f}")
    print(
        f"RSS idle {idle_rss / MB:.1f} MB; peak growth during streamed dump "
        f"{(streamed.rss_peak - idle_rss) / MB:+.1f} MB, during restore "
        f"{(restore.rss_peak - idle_rss) / MB:+.1f} MB"
    )
    rows = "exact" if restored.rows_exact else "estimated"
    print(f"restored {restored.tables} table(s), {restored.rows} rows ({rows})")


def print_phases(phases: list[Phase], db_bytes: int, dump_bytes: int) -> None:
    print(f"{'phase':34} {'seconds':>8} {'DB MB/s':>8} {'dump MB/s':>9} {'peak RSS MB':>11}")
    for phase in phases:
        print(
            f"{phase.name:34} {phase.seconds:8.2f} {db_bytes / MB / phase.seconds:8.1f} "
            f"{dump_bytes / MB / phase.seconds:9.1f} {phase.rss_peak / MB:11.1f}"
        )
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"largest child process max RSS (pg_dump, pg_restore, ...): {children / MB:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=1000, help="database size to generate")
    parser.add_argument("--store", choices=["file", "s3"], default="file")
    parser.add_argument("--compression", type=int, default=6, help="pg_dump -Z level")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/streamed alternations")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
