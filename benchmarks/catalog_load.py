"""Catalog load time and peak memory: from a checkpoint vs. from the raw commit log.

    python -m benchmarks.catalog_load [--count 1000000] [--dir DIR] [--keep] [--no-raw]
                                      [--tail 10000] [--s3 seaweedfs|moto|none] [--no-costs]
                                      [--repeat 1] [--compare]

Builds a zone whose log holds one fence and ``count - 1`` segment entries in a ``file`` store
(the objects are written straight in the file driver's on-disk format by a thread pool, since
a million ``put`` calls would take far longer than what is being measured), then loads the
catalog in fresh subprocesses, so that each peak RSS belongs to one load only: once from the raw
log, then, after writing a checkpoint, from the checkpoint. Prints both side by side.

In the process loaded from the checkpoint, the costs that must not grow with the catalog: the
newest segment's seq for the pause's handover (from the records vs. from the packed columns),
a discovery scan's reconcile of every table (one lookup per name vs. one pass per table) and a
checkpoint's rebuild of the tables after 100 new segments, and the rehydration plan of a
cold activation that moves every segment (every record built and sorted vs. the plan's names,
then its records built 50 at a time as the rehydration asks for them); each with its time
and its peak RSS over what the process held before it (VmHWM, reset through
``/proc/self/clear_refs``).

Then, on a local S3 server (SeaweedFS by default, moto with ``--s3 moto``, started here), a
zone whose newest checkpoint (1,000 entries) is followed by ``--tail`` log entries: the time
:func:`load_catalog` takes to read it, one GET per entry after the checkpoint, with the CPU
this process and the server's process spent on it (medians of ``--repeat`` loads; with
``--compare``, each followed by a load through the S3 client's full streamed read).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from az_agent.agent.backup import discovery
from az_agent.agent.restore.rehydrate import _upload_order, plan_rehydration
from az_agent.drivers.pinot.base import PinotController
from az_agent.drivers.pinot.models import SegmentMetadata, SegmentStatus, TableRef
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import (
    Catalog,
    LogEntry,
    SegmentRecord,
    SystemClock,
    load_catalog,
    write_checkpoint,
)
from az_agent.state.keys import log_key, log_prefix, segment_key

ZONE = "az1"
T = TypeVar("T")
TABLES = 20
CHUNK = 10_000


def _object(body: bytes) -> bytes:
    """An object file as the ``file`` driver writes it: the plain bytes (without a sidecar the
    driver computes the digest when it reads)."""
    return body


def _entry(seq: int) -> dict[str, Any]:
    base = {"seq": seq, "epoch": 1, "writer": "bench", "nonce": uuid.uuid4().hex}
    base["time"] = f"2030-01-01T00:00:00.{seq % 1_000_000:06d}+00:00"
    if seq == 1:
        return base | {"payload": {"kind": "fence", "epoch": 1, "previousEpoch": 0, "by": "b"}}
    table = f"table{seq % TABLES}_OFFLINE"
    name = f"table{seq % TABLES}__{seq}__20300101T0000Z_20300101T0100Z"
    crc = str(1_000_000_000 + seq)
    payload = {
        "kind": "segment",
        "table": table,
        "tableType": "OFFLINE",
        "segment": name,
        "crc": crc,
        "size": 50_000_000 + seq,
        "sha256": f"{seq:064x}",
        "key": segment_key(ZONE, table, name, crc),
        "startTimeMs": 1_893_456_000_000 + seq,
        "endTimeMs": 1_893_459_600_000 + seq,
        "commitTimeMs": 1_893_459_700_000 + seq,
        "backedUpAt": "2030-01-01T01:00:00+00:00",
    }
    return base | {"payload": payload}


def _write_chunk(root: Path, start: int, stop: int) -> None:
    for seq in range(start, stop):
        body = json.dumps(_entry(seq), separators=(",", ":")).encode()
        (root / log_key(ZONE, seq)).write_bytes(_object(body))


def build_log(root: Path, count: int, workers: int) -> float:
    began = time.perf_counter()
    (root / log_prefix(ZONE)).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers) as pool:
        chunks = [(s, min(s + CHUNK, count + 1)) for s in range(1, count + 1, CHUNK)]
        for future in [pool.submit(_write_chunk, root, a, b) for a, b in chunks]:
            future.result()
    return time.perf_counter() - began


def _hwm_mib() -> float:
    """Peak RSS since the last :func:`_reset_peak` (VmHWM), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


class _Cost:
    """Time, CPU time (the figure to compare on a loaded machine) and peak RSS (over the RSS
    at its start) of one or more timed calls."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu = 0.0
        self.peak_mib = 0.0

    def time(self, call: Callable[[], T]) -> T:
        gc.collect()
        base = _rss_mib()
        _reset_peak()
        began, cpu = time.perf_counter(), time.process_time()
        value = call()
        self.seconds += time.perf_counter() - began
        self.cpu += time.process_time() - cpu
        self.peak_mib = max(self.peak_mib, _hwm_mib() - base)
        return value

    def result(self) -> dict[str, float]:
        return {"seconds": self.seconds, "cpu": self.cpu, "peak_mib": self.peak_mib}


def _meta(table: TableRef, name: str, crc: int) -> SegmentMetadata:
    """A backed-up segment as a scan lists it."""
    return SegmentMetadata(
        table, name, SegmentStatus.UPLOADED, crc, None, None, None, None, None, None, None,
        None, "http://pinot/x", None, None, {},
    )  # fmt: skip


def _scan(catalog: Catalog, bulk: bool) -> dict[str, float]:
    """A discovery scan's reconcile of every table, every segment listed as backed up."""
    cost, clock = _Cost(), SystemClock()
    saved = discovery.BULK_RATIO
    discovery.BULK_RATIO = 10**9 if bulk else 0
    try:
        for typed in catalog.tables():
            table = TableRef.parse(typed)
            crcs = sorted(catalog.segment_crcs(typed).items())
            ready = [_meta(table, name, int(crc)) for name, crc in crcs]
            pending: dict[tuple[str, str], discovery.Pending] = {}
            call = functools.partial(discovery.reconcile, pending, table, ready, catalog, (), clock)
            cost.time(call)
            assert not pending, f"{len(pending)} segments of {typed} not recognised"
    finally:
        discovery.BULK_RATIO = saved
    return cost.result()


def _merge_after(catalog: Catalog, count: int, changes: int) -> dict[str, float]:
    """A checkpoint's rebuild of the changed tables after ``changes`` new segments."""
    for seq in range(count + 1, count + changes + 1):
        catalog.apply(LogEntry.model_validate(_entry(seq)))
    snapshot = catalog.snapshot()
    cost = _Cost()
    for table in snapshot.tables:
        if table.added or table.hidden:
            cost.time(table.merged)
    return cost.result()


def _costs(catalog: Catalog, count: int) -> dict[str, Any]:
    """What the pause, a discovery scan and a checkpoint cost on the catalog loaded."""
    records, packed = _Cost(), _Cost()
    slow = records.time(lambda: max((r.seq for r in catalog.segments()), default=None))
    fast = packed.time(catalog.newest_segment_seq)
    assert slow == fast, (slow, fast)
    listed, planned, built = _Cost(), _Cost(), _Cost()
    moves = listed.time(lambda: len(_plan_from_records(catalog, None)))
    plan = planned.time(lambda: _synchronously(plan_rehydration(None, catalog)))
    assert built.time(lambda: sum(len(batch) for batch in plan.batches(50))) == moves
    pinot = _HoldingPinot(catalog)  # a warm standby's Pinot: every segment already there
    present_records, present_crcs = _Cost(), _Cost()
    assert present_records.time(lambda: len(_plan_from_records(catalog, pinot))) == 0
    controller = cast(PinotController, pinot)
    present = present_crcs.time(lambda: _synchronously(plan_rehydration(controller, catalog)))
    assert (present.segments_total, present.present) == (0, moves)
    return {
        "plan_records": listed.result(),
        "plan_names": planned.result(),
        "plan_batches": built.result(),
        "present_records": present_records.result(),
        "present_crcs": present_crcs.result(),
        "newest_seq_records": records.result(),
        "newest_seq_packed": packed.result(),
        "scan_bulk": _scan(catalog, bulk=True),
        "scan_lookups": _scan(catalog, bulk=False),
        "merge_100": _merge_after(catalog, count, 100),
    }


class _HoldingPinot:
    """A controller that lists every segment of the catalog, with its CRC (built before any
    cost is timed)."""

    def __init__(self, catalog: Catalog) -> None:
        self.listing: dict[str, list[SegmentMetadata]] = {}
        for table in catalog.tables():
            ref = TableRef.parse(table)
            crcs = catalog.segment_crcs(table).items()
            self.listing[table] = [_meta(ref, name, int(crc)) for name, crc in crcs]

    async def segment_crcs(self, table: TableRef) -> dict[str, str]:
        """As the HTTP client answers from the controller's bulk metadata (no records)."""
        return {s.name: str(s.crc) for s in self.listing[table.name_with_type]}


def _plan_from_records(catalog: Catalog, pinot: _HoldingPinot | None) -> list[SegmentRecord]:
    """The plan as it was before ``plan_rehydration`` kept names: every record built, the
    ones Pinot lacks kept and sorted."""
    moves: list[SegmentRecord] = []
    by_table: dict[str, list[SegmentRecord]] = {}
    for record in catalog.segments():
        by_table.setdefault(record.table, []).append(record)
    for table, records in by_table.items():
        listing = pinot.listing[table] if pinot is not None else []
        local = {s.name: str(s.crc) for s in listing}
        moves += [r for r in records if local.get(r.name) != r.crc]
    moves.sort(key=_upload_order)
    return moves


def _synchronously(call: Coroutine[Any, Any, T]) -> T:
    """A coroutine that awaits no I/O (a plan with no Pinot to ask), run to its end here."""
    try:
        call.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    call.close()
    raise RuntimeError("the call waited for I/O")


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _measure(root: Path, phase: str, count: int, costs: bool = False) -> dict[str, Any]:
    store = FileObjectStore(root)
    result: dict[str, Any] = {"baseline_mib": _rss_mib()}
    if phase == "baseline":
        return result
    if phase == "direct":  # --no-raw: the catalog built in memory, only its checkpoint kept
        catalog = Catalog(ZONE)
        for seq in range(1, count + 1):
            catalog.apply(LogEntry.model_validate(_entry(seq)))
        began = time.perf_counter()
        info = await write_checkpoint(store, catalog)
        result["checkpoint_seconds"] = time.perf_counter() - began
        result["checkpoint_bytes"] = info.size if info else 0
        return result
    began = time.perf_counter()
    catalog = await load_catalog(store, ZONE)
    result["seconds"] = time.perf_counter() - began
    gc.collect()
    result |= {"segments": catalog.segment_count, "seq": catalog.last_seq}
    result |= {"peak_mib": _peak_mib(), "retained_mib": _rss_mib()}
    if phase == "checkpoint" and costs:
        result["costs"] = _costs(catalog, catalog.last_seq)
    if phase == "raw":
        began = time.perf_counter()
        info = await write_checkpoint(store, catalog)
        result["checkpoint_seconds"] = time.perf_counter() - began
        result["checkpoint_bytes"] = info.size if info else 0
    return result


def run_phase(root: Path, phase: str, count: int = 0, costs: bool = False) -> dict[str, Any]:
    """One measurement in a fresh interpreter, so peak RSS is that load's alone."""
    command = [sys.executable, "-m", "benchmarks.catalog_load", "--phase", phase, str(root)]
    command += ["--count", str(count), "--costs" if costs else "--no-costs"]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(count: int, build_seconds: float, raw: dict[str, Any], cp: dict[str, Any]) -> None:
    base = raw["baseline_mib"]
    print(f"catalog load, {count:,} log entries ({raw['segments']:,} segments), file store")
    print(f"raw log written in {build_seconds:.1f} s; interpreter baseline {base:.0f} MiB RSS")
    print(f"checkpoint written in {raw['checkpoint_seconds']:.1f} s, ", end="")
    print(f"{raw['checkpoint_bytes'] / 2**20:.1f} MiB gzipped")
    print(f"{'':24}{'raw log':>12}{'checkpoint':>12}{'ratio':>10}")
    rows = [
        ("load time (s)", raw["seconds"], cp["seconds"]),
        ("peak RSS (MiB)", raw["peak_mib"], cp["peak_mib"]),
        ("RSS after load (MiB)", raw["retained_mib"], cp["retained_mib"]),
    ]
    for label, from_raw, from_cp in rows:
        ratio = from_raw / from_cp if from_cp else float("inf")
        print(f"{label:24}{from_raw:12.2f}{from_cp:12.2f}{ratio:9.1f}x")
    per_segment = (cp["retained_mib"] - base) * 2**20 / max(cp["segments"], 1)
    print(f"catalog memory: about {per_segment:.0f} bytes per segment (RSS over the baseline)")


def report_checkpoint(count: int, built: dict[str, Any], cp: dict[str, Any]) -> None:
    base = cp["baseline_mib"]
    print(f"catalog load, {count:,} log entries ({cp['segments']:,} segments), file store")
    print(f"checkpoint written in {built['checkpoint_seconds']:.1f} s, ", end="")
    print(f"{built['checkpoint_bytes'] / 2**20:.1f} MiB gzipped; interpreter {base:.0f} MiB RSS")
    print(f"load time {cp['seconds']:.2f} s, peak RSS {cp['peak_mib']:.1f} MiB, ", end="")
    print(f"RSS after load {cp['retained_mib']:.1f} MiB")
    per_segment = (cp["retained_mib"] - base) * 2**20 / max(cp["segments"], 1)
    print(f"catalog memory: about {per_segment:.0f} bytes per segment (RSS over the baseline)")


def _cost(cost: dict[str, float]) -> str:
    return f"{cost['seconds']:.3f} s (CPU {cost['cpu']:.3f} s, +{cost['peak_mib']:.0f} MiB peak)"


def report_costs(costs: dict[str, Any]) -> None:
    rows = [
        ("pause: newest seq", "newest_seq_records", "newest_seq_packed", "records", "packed"),
        ("discovery scan, all tables", "scan_lookups", "scan_bulk", "lookups", "bulk"),
    ]
    for label, before, after, name_before, name_after in rows:
        print(f"{label}: {name_before} {_cost(costs[before])}, {name_after} {_cost(costs[after])}")
    print(f"checkpoint rebuild after 100 new segments: {_cost(costs['merge_100'])}")
    print(
        "rehydration plan, every segment already in Pinot (a warm standby's step): records "
        f"(before) {_cost(costs['present_records'])}, CRC maps {_cost(costs['present_crcs'])}"
    )
    print(
        "rehydration plan, every segment to move: records sorted (before) "
        f"{_cost(costs['plan_records'])}, names {_cost(costs['plan_names'])}, then its records "
        f"built 50 at a time {_cost(costs['plan_batches'])}"
    )


def _cpu_seconds(pid: int | None) -> float:
    """CPU time of process ``pid`` and its reaped children so far (0 when unknown)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return sum(int(tick) for tick in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def _timed_load(store: Any, server: int | None) -> dict[str, float]:
    """One catalog load: wall seconds, this process's CPU, the S3 server's CPU."""
    server_before, cpu_before = _cpu_seconds(server), time.process_time()
    began = time.perf_counter()
    catalog = await load_catalog(store, ZONE)
    seconds = time.perf_counter() - began
    agent = time.process_time() - cpu_before
    return {
        "seconds": seconds,
        "agent_cpu": agent,
        "server_cpu": _cpu_seconds(server) - server_before,
        "last_seq": catalog.last_seq,
    }


async def _tail(
    kind: str, tail: int, base: int = 1_000, *, repeat: int = 1, compare: bool = False
) -> dict[str, Any]:
    """Load time of a zone with ``tail`` entries after its checkpoint, on a local S3 server
    (a process of its own, so that its CPU and ours are told apart); ``repeat`` loads, and
    with ``compare`` each followed by one through the client's full streamed read (the
    driver's ``get`` before its lean path), so both meet the same conditions."""
    from az_agent.drivers.storage.factory import open_object_store
    from tests.servers.moto import MotoBackend
    from tests.servers.s3server import S3ServerBackend
    from tests.servers.seaweedfs import SeaweedFSBackend
    from tests.servers.wrapped import WrappedStore

    backend: S3ServerBackend = SeaweedFSBackend() if kind == "seaweedfs" else MotoBackend()
    await asyncio.to_thread(backend.start)
    process = getattr(backend, "_process", None)
    server = process.pid if process is not None else None
    runs: dict[str, list[dict[str, float]]] = {"lean": [], "full": []}
    try:
        settings, secrets = await backend.new_bucket()
        async with await open_object_store(settings, secrets) as store:
            limit = asyncio.Semaphore(32)

            async def put(seq: int) -> None:
                async with limit:
                    body = json.dumps(_entry(seq), separators=(",", ":")).encode()
                    await store.put(log_key(ZONE, seq), body)

            began = time.perf_counter()
            await asyncio.gather(*(put(seq) for seq in range(1, base + 1)))
            await write_checkpoint(store, await load_catalog(store, ZONE))
            await asyncio.gather(*(put(seq) for seq in range(base + 1, base + tail + 1)))
            written = time.perf_counter() - began
            for _ in range(repeat):
                runs["lean"].append(await _timed_load(store, server))
                if compare:
                    runs["full"].append(await _timed_load(WrappedStore(store), server))
            for run in runs["lean"] + runs["full"]:
                assert run["last_seq"] == base + tail, run["last_seq"]
    finally:
        await asyncio.to_thread(backend.stop)
    result: dict[str, Any] = {"store": kind, "tail": tail, "base": base, "written": written}
    for name, measured in runs.items():
        if measured:
            result[name] = {k: statistics.median(r[k] for r in measured) for k in measured[0]}
    result |= result["lean"]
    return result


def report_tail(result: dict[str, Any]) -> None:
    per_entry = result["seconds"] / result["tail"] * 1000
    print(
        f"{result['store']}: {result['tail']:,} entries after a checkpoint of {result['base']:,} "
        f"read in {result['seconds']:.2f} s ({per_entry:.2f} ms per entry; written in "
        f"{result['written']:.1f} s)"
    )
    for name, label in (("lean", "lean get"), ("full", "full client")):
        if run := result.get(name):
            print(
                f"  {label:12} {run['seconds']:6.2f} s, CPU agent {run['agent_cpu']:.2f} s "
                f"({run['agent_cpu'] / result['tail'] * 1e6:.0f} us per entry), "
                f"S3 server {run['server_cpu']:.2f} s; load average {os.getloadavg()[0]:.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="log entries to build")
    parser.add_argument("--dir", type=Path, help="where to build the store (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--workers", type=int, default=8, help="threads writing the raw log")
    parser.add_argument("--tail", type=int, default=10_000, help="entries after a checkpoint")
    parser.add_argument("--s3", choices=["seaweedfs", "moto", "none"], default="seaweedfs")
    parser.add_argument("--repeat", type=int, default=1, help="tail loads (medians reported)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="after each tail load, one through the S3 client's full streamed read",
    )
    parser.add_argument(
        "--phase", choices=["baseline", "raw", "checkpoint", "direct"], help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--no-raw",
        action="store_true",
        help="skip the raw-log baseline (minutes at 1,000,000): build the catalog in memory "
        "and time only the load from its checkpoint",
    )
    parser.add_argument(
        "--no-costs",
        dest="costs",
        action="store_false",
        help="skip the pause, scan and rebuild costs measured on the catalog loaded",
    )
    parser.add_argument("--costs", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("root", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        measured = _measure(args.root, args.phase, args.count, args.costs)
        print(json.dumps(asyncio.run(measured)))
        return
    root = args.dir or Path(tempfile.mkdtemp(prefix="az-catalog-bench-"))
    try:
        if args.no_raw:
            built = run_phase(root, "direct", args.count)
            cp = run_phase(root, "checkpoint", costs=args.costs)
            cp["baseline_mib"] = built["baseline_mib"]
            report_checkpoint(args.count, built, cp)
        else:
            build_seconds = build_log(root, args.count, args.workers)
            raw = run_phase(root, "raw")
            raw["baseline_mib"] = run_phase(root, "baseline")["baseline_mib"]
            cp = run_phase(root, "checkpoint", costs=args.costs)
            report(args.count, build_seconds, raw, cp)
        if "costs" in cp:
            report_costs(cp["costs"])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.s3 != "none" and args.tail > 0:
        tail = _tail(args.s3, args.tail, repeat=args.repeat, compare=args.compare)
        report_tail(asyncio.run(tail))


if __name__ == "__main__":
    main()
