"""The cost of one discovery poll with many segments backed up and a few new ones.

    python -m benchmarks.discovery [--segments 100000] [--new 10] [--partitions 4] [--rounds 3]

Runs the Pinot emulator in a subprocess with one REALTIME table holding ``--segments`` pushed
segments of metadata only (``/_emulator/tables/{t}/history``: their tarballs are never
downloaded here) and ``--partitions`` consuming ones, and an agent whose catalog already holds
every one of them (entries applied in memory, as a catalog loaded from the bucket holds them).
Each round the emulator commits ``--new`` real segments, and this process times one poll of
:class:`SegmentBackupLoop` between scans (names listed, new names read), then one scan (every
segment's metadata, what every poll did before): the agent's CPU (this process; the emulator's
is its own), the bytes of the controller's answers and the number of requests. Exit 1 unless
every poll between scans found the new segments, read the metadata of no more than the new and
the consuming ones, and used under 100 ms of CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.leadership.session import LeaderSession
from az_agent.drivers.pinot import HttpPinotController, PinotSettings, TableRef, TableType
from az_agent.drivers.pinot.models import SegmentMetadata
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import Catalog, SegmentPayload
from az_agent.state.entries import LogEntry
from az_agent.state.keys import segment_key
from benchmarks.segment_backup import lead

TABLE = TableRef("bench", TableType.REALTIME)
ZONE = "discovery"
CPU_LIMIT = 0.100


class MeteredController(HttpPinotController):
    """The controller client, counting requests and the body bytes of their answers."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout_seconds=120)
        self.requests = 0
        self.bytes = 0
        self.paths: list[str] = []

    async def _session(self) -> aiohttp.ClientSession:
        if self._session_obj is None:
            trace = aiohttp.TraceConfig()
            trace.on_request_end.append(self._ended)
            self._session_obj = aiohttp.ClientSession(trace_configs=[trace])
        return self._session_obj

    async def _ended(self, _session: Any, _context: SimpleNamespace, params: Any) -> None:
        self.requests += 1
        self.bytes += params.response.content_length or 0
        self.paths.append(params.url.path)

    def reset(self) -> None:
        self.requests = self.bytes = 0
        self.paths.clear()


@dataclass
class Poll:
    kind: str
    cpu: float
    seconds: float
    requests: int
    bytes: int
    metadata_reads: int
    pending: int

    def describe(self) -> str:
        return (
            f"| {self.kind} | {self.cpu * 1000:.1f} | {self.seconds * 1000:.0f} | "
            f"{self.bytes / 1e6:.2f} | {self.requests} | {self.metadata_reads} | {self.pending} |"
        )


@contextlib.asynccontextmanager
async def emulator(workdir: Path, partitions: int) -> AsyncIterator[str]:
    """``az-agent pinot-emulator`` in a subprocess with the REALTIME table ``bench``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "az_agent.cli", "pinot-emulator", "--port", "0", "--data",
        str(workdir / "pinot"), "--seed-tables", f"bench:REALTIME:{partitions}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if "listening on " not in line:
            raise RuntimeError(f"the emulator did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        await process.wait()


def entry(catalog: Catalog, meta: SegmentMetadata) -> LogEntry:
    """The log entry a backup of ``meta`` would have written next."""
    crc = str(meta.crc)
    payload = SegmentPayload(
        table=TABLE.name_with_type, table_type=TABLE.type.value, segment=meta.name, crc=crc,
        size=meta.size_bytes or 0, sha256=f"{catalog.last_seq:064x}",
        key=segment_key(ZONE, TABLE.name_with_type, meta.name, crc),
        start_time_ms=meta.start_time_ms, end_time_ms=meta.end_time_ms,
        commit_time_ms=meta.completed_at_ms, backed_up_at=datetime.now(UTC),
    )  # fmt: skip
    return LogEntry(
        seq=catalog.last_seq + 1, epoch=catalog.epoch, term=catalog.term, writer="bench",
        nonce=uuid.uuid4().hex, time=datetime.now(UTC), payload=payload,
    )  # fmt: skip


async def back_up_in_memory(session: LeaderSession, pinot: HttpPinotController) -> int:
    """Apply a ``segment`` entry for every backup-ready segment the catalog lacks, in memory
    only (the log in the bucket keeps its fence: the session's own appends still land after
    it, and the catalog, already past them, leaves them out)."""
    ready = await pinot.backup_ready_segments(TABLE)
    held = set(session.catalog.segment_names(TABLE.name_with_type))
    added = [meta for meta in ready if meta.name not in held]
    for meta in added:
        session.catalog.apply(entry(session.catalog, meta))
    return len(added)


async def timed(
    kind: str, loop: SegmentBackupLoop, session: LeaderSession, pinot: MeteredController
) -> Poll:
    pinot.reset()
    cpu, start = time.process_time(), time.perf_counter()
    pending = await loop.discover(session, scan=kind == "scan")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    reads = sum(1 for path in pinot.paths if path.endswith("/metadata"))
    return Poll(kind, cpu, seconds, pinot.requests, pinot.bytes, reads, pending)


async def run(options: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="az-bench-discovery-"))
    try:
        async with (
            emulator(workdir, options.partitions) as url,
            MeteredController(url) as pinot,
            aiohttp.ClientSession() as http,
            FileObjectStore(workdir / "bucket") as store,
        ):
            began = time.perf_counter()
            async with http.post(
                f"{url}/_emulator/tables/bench/history?count={options.segments}"
            ) as response:
                response.raise_for_status()
            session = await lead(store, ZONE)
            held = await back_up_in_memory(session, pinot)
            print(
                f"{held} segments committed and backed up, {options.partitions} consuming "
                f"(set up in {time.perf_counter() - began:.1f} s); python "
                f"{sys.version.split()[0]}"
            )
            print("| poll | agent CPU ms | wall ms | MB from the controller | requests "
                  "| metadata reads | pending after |")  # fmt: skip
            print("|---|---:|---:|---:|---:|---:|---:|")
            polls: list[Poll] = []
            settings = PinotSettings(controller_url=url, poll_interval_seconds=5)
            for _ in range(options.rounds):
                loop = SegmentBackupLoop(pinot, settings, session.metrics, session.clock)
                await loop.discover(session, scan=True)  # a leader's first poll, configs too
                async with http.post(
                    f"{url}/_emulator/tables/bench/generate?count={options.new}"
                ) as response:
                    response.raise_for_status()
                for kind in ("between scans", "scan"):
                    poll = await timed(kind, loop, session, pinot)
                    polls.append(poll)
                    print(poll.describe(), flush=True)
                await back_up_in_memory(session, pinot)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    return verdict(polls, options)


def verdict(polls: list[Poll], options: argparse.Namespace) -> int:
    between = [p for p in polls if p.kind == "between scans"]
    scans = [p for p in polls if p.kind == "scan"]
    cpu = statistics.median(p.cpu for p in between)
    print(
        f"median between scans: {cpu * 1000:.1f} ms CPU, "
        f"{statistics.median(p.bytes for p in between) / 1e6:.2f} MB; scans "
        f"{statistics.median(p.cpu for p in scans) * 1000:.1f} ms CPU, "
        f"{statistics.median(p.bytes for p in scans) / 1e6:.2f} MB"
    )
    failed = [
        p
        for p in between
        if p.pending != options.new
        or p.metadata_reads > options.new + options.partitions
        or p.cpu >= CPU_LIMIT
    ]
    for poll in failed:
        print(f"FAILED: {poll}")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--segments", type=int, default=100_000, help="segments backed up")
    parser.add_argument("--new", type=int, default=10, help="segments committed per round")
    parser.add_argument("--partitions", type=int, default=4, help="consuming segments")
    parser.add_argument("--rounds", type=int, default=3, help="polls of each kind timed")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
