"""Continuous segment backup: lag and throughput beside a curl + rclone baseline, and memory.

    python -m benchmarks.segment_backup [--rate 30] [--size-mb 16] [--duration 30]
        [--sizes 4,16,256] [--total-mb 512] [--min-count 4] [--concurrency 4]
        [--store s3|seaweedfs|file]

Runs the Pinot emulator in a subprocess (its segment building does not count in this process's
memory or CPU) and the bucket in moto (``--store s3``, the default), SeaweedFS
(``--store seaweedfs``, a Go S3 server, closer to a real store's speed) or a directory, then
measures:

* sustained: the emulator commits a segment of ``--size-mb`` every ``60 / --rate`` seconds for
  ``--duration`` seconds while :class:`SegmentBackupLoop` runs; lag from the commit in Pinot
  (the moment the emulator's commit call returns) to durable in the bucket (the log entry's
  time), p50/p99, and the achieved throughput;
* catch-up, for each of ``--sizes`` (MiB): ``--total-mb / size`` segments (at least
  ``--min-count``) backed up by one :meth:`SegmentBackupLoop.flush` against the same segments
  downloaded to disk with ``curl`` and uploaded with ``rclone copy`` (as a user would script
  it), both with ``--concurrency`` transfers; the CPU seconds per MB of this process (the
  agent) and of curl + rclone (their rusage), and the peak resident memory of this process for
  each size, which must not grow with the segment size. ``--repeat`` runs per size (2 by
  default), the agent first in odd runs and second in even ones (see :func:`catch_up`), then
  a row of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.drivers.pinot import HttpPinotController, PinotSettings, TableRef, TableType
from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.factory import open_object_store
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import LeaseKeeper, LeaseSettings, LogWriter, SystemClock, load_catalog
from benchmarks.memory import rss_bytes, sampled

T = TypeVar("T")
MB = 1_000_000
MIB = 1 << 20
TABLE = TableRef("bench", TableType.REALTIME)
LEASE = LeaseSettings(ttl_seconds=3600, renew_deadline_seconds=3000, retry_period_seconds=2)


@contextlib.asynccontextmanager
async def running(work: Awaitable[None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def lead(store: ObjectStore, zone: str) -> LeaderSession:
    """Take the zone's lease and write the fence, as the agent does before its loops run."""
    clock = SystemClock()
    keeper = LeaseKeeper(store, zone, f"bench-{zone}", LEASE, clock=clock)
    if not await keeper.tick():
        raise RuntimeError(f"could not take the lease of {zone}")
    epoch = keeper.epoch
    assert epoch is not None
    writer = LogWriter(store, zone, epoch, keeper.holder_id, clock=clock)
    await writer.write_fence(reason="benchmark")
    catalog = await load_catalog(store, zone)
    return LeaderSession(zone, epoch, store, writer, catalog, AgentMetrics(zone), clock)


@dataclass
class Emulator:
    url: str
    process: asyncio.subprocess.Process


@contextlib.asynccontextmanager
async def emulator(workdir: Path, size: int, partitions: int) -> AsyncIterator[Emulator]:
    """``az-agent pinot-emulator`` in a subprocess, with one REALTIME table ``bench``."""
    data = workdir / f"pinot-{size}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "az_agent.cli", "pinot-emulator", "--port", "0", "--data",
        str(data), "--seed-tables", f"bench:REALTIME:{partitions}", "--segment-size", str(size),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if "listening on " not in line:
            raise RuntimeError(f"the emulator did not start: {line!r}")
        yield Emulator(line.rsplit(" ", 1)[1].strip(), process)
    finally:
        process.terminate()
        await process.wait()
        await asyncio.to_thread(shutil.rmtree, data, True)


async def commit_one(http: aiohttp.ClientSession, url: str) -> tuple[str, float]:
    """Make the emulator commit one segment; its name and when the commit had happened."""
    async with http.post(f"{url}/_emulator/tables/bench/generate?count=1") as response:
        body = await response.json()
    [name] = body["segments"]
    return name, time.time()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def wait_until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not backed up within {within:.0f} s")
        await asyncio.sleep(0.05)


async def sustained(options: argparse.Namespace, store: ObjectStore, workdir: Path) -> None:
    size = int(options.size_mb * MIB)
    interval = 60.0 / options.rate
    count = max(1, round(options.duration / interval))
    settings = PinotSettings(
        poll_interval_seconds=options.poll_interval, concurrency=options.concurrency
    )
    async with (
        emulator(workdir, size, 4) as pinot_process,
        HttpPinotController(pinot_process.url, timeout_seconds=120) as pinot,
        aiohttp.ClientSession() as http,
    ):
        session = await lead(store, "sustained")
        loop = SegmentBackupLoop(pinot, settings, session.metrics, session.clock)
        commits: dict[str, float] = {}

        async def produce() -> None:
            name, at = await commit_one(http, pinot_process.url)
            commits[name] = at

        idle = rss_bytes()
        async with sampled() as samples, running(loop.run(session)):
            start = time.perf_counter()
            async with asyncio.TaskGroup() as producers:
                for index in range(count):
                    producers.create_task(produce())
                    await asyncio.sleep(
                        max(0.0, start + (index + 1) * interval - time.perf_counter())
                    )
            catalog = session.catalog
            await wait_until(
                lambda: all(catalog.segment(TABLE.name_with_type, n) for n in commits), 600
            )
    records = [catalog.segment(TABLE.name_with_type, name) for name in commits]
    lags = [r.committed_ts - commits[r.name] for r in records if r is not None]
    total = sum(r.size for r in records if r is not None)
    span = max(r.committed_ts for r in records if r) - min(commits.values())
    offered = count * size / (count * interval)
    print(
        f"sustained: {count} segments of {size / MIB:.0f} MiB at {options.rate:g}/min "
        f"(offered {offered / MB:.1f} MB/s), poll {options.poll_interval:g} s, "
        f"concurrency {options.concurrency}"
    )
    print(
        f"  lag commit -> durable: p50 {percentile(lags, 0.5):.2f} s, p99 "
        f"{percentile(lags, 0.99):.2f} s, max {max(lags):.2f} s, mean {statistics.mean(lags):.2f} s"
    )
    print(
        f"  achieved {total / span / MB:.1f} MB/s over {span:.1f} s; RSS idle {idle / MIB:.0f} MiB,"
        f" peak {max(samples) / MIB:.0f} MiB (+{(max(samples) - idle) / MIB:.0f} MiB)"
    )


@dataclass
class Tool:
    """One baseline step: wall time and the CPU its processes used."""

    seconds: float
    cpu: float


@dataclass
class CatchUp:
    size: int
    count: int
    seconds: float
    cpu: float
    rss_before: int
    rss_peak: int
    download: Tool
    upload: Tool
    first: str = "agent"
    """Which went first: ``agent`` or ``baseline`` (``median`` for a row of medians)."""

    HEADER = (
        "| size | segments | first | agent MB/s | curl+rclone MB/s (s = curl + rclone) | "
        "agent/baseline | agent CPU ms/MB | curl CPU ms/MB | curl+rclone CPU ms/MB | "
        "RSS peak (+ over idle) |\n"
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    )

    def describe(self) -> str:
        total = self.size * self.count / MB
        base = self.download.seconds + self.upload.seconds
        per_mb = 1000 / total
        return (
            f"| {self.size / MIB:.0f} MiB | {self.count} | {self.first} | "
            f"{total / self.seconds:.1f} "
            f"({self.seconds:.1f} s) | {total / base:.1f} ({base:.1f} s = "
            f"{self.download.seconds:.1f} + {self.upload.seconds:.1f}) | "
            f"{base / self.seconds:.2f}x | {self.cpu * per_mb:.2f} | "
            f"{self.download.cpu * per_mb:.2f} | "
            f"{(self.download.cpu + self.upload.cpu) * per_mb:.2f} | "
            f"{self.rss_peak / MIB:.0f} MiB (+{(self.rss_peak - self.rss_before) / MIB:.0f}) |"
        )


def children_cpu() -> float:
    """CPU seconds of every child process reaped so far (the tools, once they exit)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def written_back() -> None:
    """Flush the page cache's dirty pages before a timed stretch, so that none shares the
    machine with the writeback of the one before (a gigabyte or more each)."""
    await asyncio.to_thread(os.sync)


async def run_tool(*argv: str, env: dict[str, str] | None = None) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({process.returncode}): {err.decode()[-500:]}")


async def baseline(
    names: list[str], url: str, target: str, workdir: Path, options: argparse.Namespace
) -> tuple[Tool, Tool]:
    """``curl`` every segment to disk (``--concurrency`` at a time), then ``rclone copy``."""
    folder = workdir / "baseline"
    folder.mkdir()
    limit = asyncio.Semaphore(options.concurrency)

    async def download(name: str) -> None:
        async with limit:
            await run_tool("curl", "-sSf", "-o", str(folder / name), f"{url}/segments/bench/{name}")

    cpu, start = children_cpu(), time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for name in names:
            group.create_task(download(name))
    downloaded = Tool(time.perf_counter() - start, children_cpu() - cpu)
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env["RCLONE_CONFIG"] = str(workdir / "rclone.conf")
    transfers = str(options.concurrency)
    cpu, start = children_cpu(), time.perf_counter()
    await run_tool("rclone", "copy", str(folder), target, "--transfers", transfers, env=env)
    uploaded = Tool(time.perf_counter() - start, children_cpu() - cpu)
    await asyncio.to_thread(shutil.rmtree, folder)
    return downloaded, uploaded


async def catch_up(
    size: int,
    count: int,
    store: ObjectStore,
    target: str,
    workdir: Path,
    options: argparse.Namespace,
    run: int = 1,
) -> CatchUp:
    """The agent's flush and the baseline over the same ``count`` segments; the agent goes
    first in odd runs and second in even ones.

    Whoever goes second meets a bucket server holding what the first one wrote, and a page
    cache the first one grew or just freed (on this kind of virtual machine a gigabyte written
    to new page-cache pages costs 2-3 s of system CPU, 0.2 s on pages freed a moment before):
    SeaweedFS, 16 MiB segments, the agent took 6.3-6.6 s first and 9.9-11.8 s second, the
    baseline 6.2-6.5 s second and 5.1-6.0 s first. Alternating runs share that out.
    """
    async with (
        emulator(workdir, size, 4) as pinot_process,
        HttpPinotController(pinot_process.url, timeout_seconds=120) as pinot,
        aiohttp.ClientSession() as http,
    ):
        names = [(await commit_one(http, pinot_process.url))[0] for _ in range(count)]
        session = await lead(store, f"catchup-{size // MIB}-{run}")
        settings = PinotSettings(concurrency=options.concurrency)
        loop = SegmentBackupLoop(pinot, settings, session.metrics, session.clock)

        async def the_baseline() -> tuple[Tool, Tool]:
            where = f"{target}/baseline-{size // MIB}-{run}"
            return await baseline(names, pinot_process.url, where, workdir, options)

        if run % 2 == 0:
            down, up = await the_baseline()
        await written_back()
        before = rss_bytes()
        async with sampled() as samples:
            cpu, start = time.process_time(), time.perf_counter()
            committed = await loop.flush(session)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        if committed != count:
            raise RuntimeError(f"flush committed {committed} of {count} segments")
        if run % 2 == 1:
            await written_back()
            down, up = await the_baseline()
    return CatchUp(
        size,
        count,
        seconds,
        cpu,
        before,
        max(samples),
        down,
        up,
        "agent" if run % 2 else "baseline",
    )


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="az-bench-segments-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def open_store(kind: str, workdir: Path) -> AsyncIterator[tuple[ObjectStore, str]]:
    """The store and the rclone destination of the same bucket."""
    if kind == "file":
        root = workdir / "bucket"
        async with FileObjectStore(root) as store:
            (workdir / "rclone.conf").write_text("")
            yield store, str(workdir / "rclone-copies")
        return
    from tests.servers.moto import MotoBackend
    from tests.servers.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3ServerBackend
    from tests.servers.seaweedfs import SeaweedFSBackend

    backend: S3ServerBackend = SeaweedFSBackend() if kind == "seaweedfs" else MotoBackend()
    await asyncio.to_thread(backend.start)
    try:
        settings, secrets = await backend.new_bucket()
        (workdir / "rclone.conf").write_text(
            f"[bench]\ntype = s3\nprovider = Other\naccess_key_id = {ACCESS_KEY}\n"
            f"secret_access_key = {SECRET_KEY}\nendpoint = {backend.endpoint}\n"
            f"region = {REGION}\nforce_path_style = true\n"
        )
        async with await open_object_store(settings, secrets) as store:
            yield store, f"bench:{settings.s3.bucket}"
    finally:
        await asyncio.to_thread(backend.stop)


async def run(options: argparse.Namespace) -> None:
    with scratch_dir() as workdir:
        async with open_store(options.store, workdir) as (store, target):
            print(f"store={options.store}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
            if options.duration > 0:
                await sustained(options, store, workdir)
            print("catch-up (one flush of segments already committed) beside curl + rclone:")
            print(CatchUp.HEADER)
            for size_mb in options.sizes:
                count = max(options.min_count, round(options.total_mb / size_mb))
                runs = []
                for run in range(1, options.repeat + 1):
                    size = int(size_mb * MIB)
                    runs.append(await catch_up(size, count, store, target, workdir, options, run))
                    print(runs[-1].describe(), flush=True)
                if len(runs) > 1:
                    print(median_of(runs).describe(), flush=True)


def median_of(runs: list[CatchUp]) -> CatchUp:
    """Each figure's median over ``runs`` (``first`` then reads "median")."""
    first = runs[0]
    return CatchUp(
        first.size,
        first.count,
        statistics.median(r.seconds for r in runs),
        statistics.median(r.cpu for r in runs),
        int(statistics.median(r.rss_before for r in runs)),
        int(statistics.median(r.rss_peak for r in runs)),
        Tool(
            statistics.median(r.download.seconds for r in runs),
            statistics.median(r.download.cpu for r in runs),
        ),
        Tool(
            statistics.median(r.upload.seconds for r in runs),
            statistics.median(r.upload.cpu for r in runs),
        ),
        "median",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=30, help="segments per minute (sustained)")
    parser.add_argument("--size-mb", type=float, default=16, help="segment size, MiB")
    parser.add_argument("--duration", type=float, default=30, help="sustained phase, seconds")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="backup loop poll, s")
    parser.add_argument(
        "--sizes",
        type=lambda text: [float(size) for size in text.split(",")],
        default=[4.0, 16.0, 256.0],
        help="catch-up segment sizes, MiB, comma-separated",
    )
    parser.add_argument("--total-mb", type=float, default=512, help="catch-up MiB per size")
    parser.add_argument("--min-count", type=int, default=4, help="catch-up segments per size")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel transfers (all)")
    parser.add_argument("--store", choices=["s3", "seaweedfs", "file"], default="s3")
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="catch-up runs per size, the agent first in odd ones, the baseline in even ones; "
        "with more than one, a row of medians follows",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
