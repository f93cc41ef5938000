"""Activation (restore direction) beside the script an SRE would write: rclone, then curl.

    python -m benchmarks.rehydrate [--store s3|seaweedfs|file] [--segments 64,16]
        [--size-mb 8,64] [--concurrency 8] [--repeat 1]

For each pair of ``--segments`` and ``--size-mb`` (same positions): zone az1, an ``az-agent
run`` process on a Pinot emulator, backs up that many committed segments to the bucket and
stops (its lease released). Then, against fresh emulators of the same kind:

* the script: ``rclone copy`` of az1's segment objects to a local folder (``--transfers``
  ``--concurrency``), then every file uploaded with ``curl`` (``POST /v2/segments``, multipart,
  ``--concurrency`` at a time) into an emulator where the table already exists; rclone alone
  and curl alone are the transfer floor;
* the agent: zone az2, an ``az-agent run`` process (``rehydration.concurrency`` =
  ``--concurrency``) on an empty emulator, ``POST /activate?zone=az1`` to ``ACTIVE`` as seen on
  ``/status``, with the time of each phase.

Printed per size: whole activation and its ``rehydrate-segments`` phase against the script
(script seconds / agent seconds: above 1 the agent is faster), the phase against the faster
floor, the fixed cost (the activation without its rehydration: fence, configs, resume), CPU
seconds per MB moved of the agent process, of curl and of rclone, and the agent's peak RSS;
for each timed stretch (rclone, curl, the activation), how busy the machine was and the CPU of
the bucket's server and of the receiving emulator, to tell what was left for the one measured.
The bucket runs in its own process (``s3``: moto, ``seaweedfs``) or is a directory;
emulators, rclone, curl and both agents are processes of their own, so each is measured alone.
The receiving emulators keep their deep store in ``/dev/shm`` (see :func:`receiver`), and
dirty pages are flushed before each timed stretch.
Verdicts (exit 1 when one fails): activation >= 1.2x the script; phase within 15 % of the
faster floor; fixed cost under 0.3 s; agent CPU per MB <= 1.5x curl's; peak RSS within 20 %
across sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import aiohttp

from az_agent.drivers.pinot import HttpPinotController, TableRef, TableType
from az_agent.drivers.storage.config import CloudStorageSettings
from az_agent.sandbox.postgres import free_port
from az_agent.sandbox.processes import AgentProcess, AgentProcessError
from benchmarks.segment_backup import (
    MB,
    MIB,
    children_cpu,
    run_tool,
    scratch_dir,
    written_back,
)
from benchmarks.standby import Emulator, emulator, generate

TABLE = TableRef("bench", TableType.REALTIME)
PARTITIONS = 4
SECRET = "cloud-storage-secret"
TICKS = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1
ACTIVATION_RATIO = 1.2
FLOOR_MARGIN = 1.15
FIXED_LIMIT = 0.3
CPU_RATIO = 1.5
RSS_SPREAD = 1.2
RECEIVER_SEGMENT_SIZE = 64 << 10
"""What the receiving emulators build when a table's consuming segments are committed (the
agent pauses the REALTIME table it creates): built at the test size, they cost the emulator
seconds of work that real Pinot, committing empty segments, does not do."""


@dataclass
class Bucket:
    """Where the agents and rclone find the same bucket."""

    kind: str
    settings: dict[str, Any]
    """``global.cloudStorage`` of the agents' configuration."""
    secrets: dict[str, str]
    """Files of the storage secret (``accessKey``, ``secretKey``)."""
    rclone_config: str
    segments: str
    """rclone's name of az1's segment objects."""
    pid: int | None = None
    """The S3 server's process (none for a directory)."""


@contextlib.asynccontextmanager
async def bucket(kind: str, workdir: Path) -> AsyncIterator[Bucket]:
    if kind == "file":
        root = workdir / "bucket"
        root.mkdir()
        settings = CloudStorageSettings(type="file", file={"path": str(root)})  # type: ignore[arg-type]
        yield Bucket(kind, _raw(settings), {}, "", str(root / "az1" / "segments"))
        return
    from tests.servers.moto import MotoBackend
    from tests.servers.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3ServerBackend
    from tests.servers.seaweedfs import SeaweedFSBackend

    backend: S3ServerBackend = SeaweedFSBackend() if kind == "seaweedfs" else MotoBackend()
    await asyncio.to_thread(backend.start)
    try:
        settings, _ = await backend.new_bucket()
        rclone = (
            f"[bucket]\ntype = s3\nprovider = Other\naccess_key_id = {ACCESS_KEY}\n"
            f"secret_access_key = {SECRET_KEY}\nendpoint = {backend.endpoint}\n"
            f"region = {REGION}\nforce_path_style = true\n"
        )
        secrets = {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}
        yield Bucket(
            kind,
            _raw(settings),
            secrets,
            rclone,
            f"bucket:{settings.s3.bucket}/az1/segments",
            backend.pid,
        )
    finally:
        await asyncio.to_thread(backend.stop)


def _raw(settings: CloudStorageSettings) -> dict[str, Any]:
    raw = settings.model_dump(mode="json", by_alias=True)
    raw["secretName"] = SECRET
    return raw


def agent_document(
    zone: str, role: str, store: Bucket, pinot_url: str, workdir: Path, concurrency: int
) -> dict[str, Any]:
    return {
        "global": {"cloudStorage": store.settings},
        "az-service": {
            "config": {
                "zone": zone,
                "role": role,
                "secretsDir": str(workdir / "secrets"),
                "http": {"host": "127.0.0.1", "port": free_port()},
                "pinot": {
                    "controllerUrl": pinot_url,
                    "pollIntervalSeconds": 0.2,
                    "concurrency": concurrency,
                },
                "postgres": {"databases": []},
                "rehydration": {"concurrency": concurrency},
            }
        },
    }


# ------------------------------------------------------------------------------ processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Load:
    """What the machine and the servers spent over a stretch of time: on two cores shared by
    five processes, whether the agent could have gone faster is a question of what was left."""

    busy: float = 0.0
    """Fraction of all CPUs' time not idle."""
    server: float = 0.0
    """CPU seconds of the S3 server process (0 for a directory)."""
    emulator: float = 0.0
    """CPU seconds of the receiving Pinot emulator."""

    def describe(self) -> str:
        return f"{self.busy:.0%} busy (server {self.server:.2f} s, emulator {self.emulator:.2f} s)"


def machine_jiffies() -> tuple[int, int]:
    """Busy and total clock ticks of all CPUs since boot (``/proc/stat``; idle and iowait are
    idle)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


@contextlib.contextmanager
def load(into: Load, server: int | None, emulator: int) -> Iterator[None]:
    """Fill ``into`` with the machine's and the servers' CPU over the ``with`` body."""
    pids = [pid for pid in (server, emulator) if pid is not None]
    before, cpus = machine_jiffies(), [cpu_seconds(pid) for pid in pids]
    yield
    after = machine_jiffies()
    into.busy = (after[0] - before[0]) / max(1, after[1] - before[1])
    spent = [cpu_seconds(pid) - cpu for pid, cpu in zip(pids, cpus, strict=True)]
    into.emulator = spent[-1]
    into.server = spent[0] if server is not None else 0.0


@contextlib.asynccontextmanager
async def receiver(workdir: Path, name: str) -> AsyncIterator[Emulator]:
    """An empty emulator to upload into, its deep store in memory (``/dev/shm``) where the
    machine has one.

    On this kind of virtual machine a gigabyte written to new page-cache pages of a disk costs
    the writer 2-3 s of system CPU, against 0.2 s when the pages were freed a moment before and
    0.4 s on tmpfs; the receiving emulator paid 2.4 s for curl's uploads and 4.0 s for the
    agent's, or the other way round when the agent ran first. Both sides upload into the same
    kind of emulator, which is not what is measured.
    """
    with tempfile.TemporaryDirectory(prefix=f"az-bench-{name}-", dir=in_memory(workdir)) as data:
        async with emulator(Path(data), RECEIVER_SEGMENT_SIZE, None) as pinot:
            yield pinot


def in_memory(fallback: Path) -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else fallback


def rss(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} for process {pid}")


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as answer:
        answer.raise_for_status()
        return await answer.json()


async def started(agent: AgentProcess) -> None:
    try:
        await agent.start()
    except AgentProcessError as exc:
        raise RuntimeError(f"{exc}:\n{agent.log_tail(40)}") from None


# ------------------------------------------------------------------------------ measuring


@dataclass
class Result:
    segments: int
    size: int
    script_download: float = 0.0
    script_upload: float = 0.0
    rclone_cpu: float = 0.0
    curl_cpu: float = 0.0
    activation: float = 0.0
    accepted: float = 0.0
    """``/activate`` answered 202 (validation, journal, the claim) after this long."""
    rehydration: float = 0.0
    agent_cpu: float = 0.0
    rss_idle: int = 0
    rss_peak: int = 0
    load_download: Load = field(default_factory=Load)
    load_upload: Load = field(default_factory=Load)
    load_agent: Load = field(default_factory=Load)
    phases: list[tuple[str, float]] = field(default_factory=list)
    operation: float = 0.0
    """The operation's own duration by the agent's clock (journaled to finished, before its
    last write and the poll that saw ``ACTIVE``)."""
    detail: str = ""

    @property
    def megabytes(self) -> float:
        return self.segments * self.size / MB

    @property
    def script(self) -> float:
        return self.script_download + self.script_upload

    @property
    def floor(self) -> float:
        return min(self.script_download, self.script_upload)

    @property
    def fixed(self) -> float:
        return self.activation - self.rehydration

    @property
    def cpu_bound(self) -> float:
        """The least the activation could take with every CPU busy on the work the agent, the
        bucket's server and the emulator did: where it is above the floor's 1.15x, that target
        needs less CPU, not better overlap."""
        load = self.load_agent
        return (self.agent_cpu + load.server + load.emulator) / CPUS

    def per_mb(self, seconds: float) -> float:
        return seconds / self.megabytes * 1000

    def describe(self) -> list[str]:
        return [
            f"{self.segments} x {self.size / MIB:g} MiB ({self.megabytes:.0f} MB): "
            f"activation {self.activation:.2f} s, rehydrate-segments {self.rehydration:.2f} s "
            f"({self.megabytes / self.rehydration:.0f} MB/s); script {self.script:.2f} s "
            f"= rclone {self.script_download:.2f} + curl {self.script_upload:.2f}",
            f"  script/activation {self.script / self.activation:.2f}x, script/rehydration "
            f"{self.script / self.rehydration:.2f}x, rehydration/floor "
            f"{self.rehydration / self.floor:.2f} (floor {self.floor:.2f} s), fixed "
            f"{self.fixed:.2f} s (202 after {self.accepted:.2f} s)",
            f"  CPU ms/MB: agent {self.per_mb(self.agent_cpu):.2f}, curl "
            f"{self.per_mb(self.curl_cpu):.2f}, rclone {self.per_mb(self.rclone_cpu):.2f}; "
            f"agent RSS idle {self.rss_idle / MIB:.0f} MiB, peak {self.rss_peak / MIB:.0f} MiB",
            f"  machine: rclone {self.load_download.describe()}; curl "
            f"{self.load_upload.describe()}; activation {self.load_agent.describe()}; "
            f"agent + server + emulator CPU / {CPUS} CPUs {self.cpu_bound:.2f} s",
            "  phases: "
            + ", ".join(f"{name} {seconds:.2f}" for name, seconds in self.phases if seconds)
            + f" (sum {sum(s for _, s in self.phases):.2f} s, operation {self.operation:.2f} s)",
            f"  {self.detail}",
        ]


async def back_up(
    store: Bucket, workdir: Path, count: int, size: int, concurrency: int
) -> dict[str, Any]:
    """az1 backs up ``count`` segments of ``size`` and stops; the table's config and schema."""
    async with emulator(workdir / "pinot-az1", size, PARTITIONS) as pinot:
        await generate(pinot.url, count)
        az1 = AgentProcess(
            "az1", agent_document("az1", "active", store, pinot.url, workdir, concurrency), workdir
        )
        await started(az1)
        try:
            deadline = time.monotonic() + 1800
            async with aiohttp.ClientSession() as http:
                while True:
                    done = _backed_up(await get_json(http, f"{az1.url}/status"))
                    if done >= count:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"az1 backed up {done} of {count} segments")
                    await asyncio.sleep(0.2)
        finally:
            await az1.stop()
        async with HttpPinotController(pinot.url) as controller:
            [config] = (await controller.table_configs(TABLE.raw)).values()
            schema = await controller.table_schema(TABLE.raw)
    return {"config": config, "schema": schema}


def _backed_up(status: dict[str, Any]) -> int:
    """Segments az1's ``/status`` says it has backed up."""
    return int(status["backups"]["segments"]["segmentsBackedUp"])


async def script(
    store: Bucket, workdir: Path, size: int, table: dict[str, Any], concurrency: int, result: Result
) -> None:
    """``rclone copy`` of the segment objects, then ``curl`` uploads: what an SRE would run."""
    folder = workdir / "script"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    (workdir / "rclone.conf").write_text(store.rclone_config)
    env["RCLONE_CONFIG"] = str(workdir / "rclone.conf")
    async with receiver(workdir, "pinot-script") as pinot:
        async with HttpPinotController(pinot.url) as controller:
            await controller.create_schema(table["schema"])
            await controller.create_table(table["config"])
        await written_back()
        before, start = children_cpu(), time.perf_counter()
        with load(result.load_download, store.pid, pinot.process.pid):
            await run_tool(
                "rclone", "copy", store.segments, str(folder), "--transfers", str(concurrency),
                "--checkers", str(concurrency), env=env,
            )  # fmt: skip
        result.script_download = time.perf_counter() - start
        result.rclone_cpu = children_cpu() - before
        files = sorted(path for path in folder.rglob("*.tar.gz"))
        limit = asyncio.Semaphore(concurrency)
        url = f"{pinot.url}/v2/segments?tableName={TABLE.raw}&tableType={TABLE.type.value}"

        async def upload(path: Path) -> None:
            name = path.parent.name  # <table>/<segment>/<crc>.tar.gz
            async with limit:
                await run_tool(
                    "curl", "-sSf", "-o", "/dev/null", "-X", "POST", "-H", "UPLOAD_TYPE: SEGMENT",
                    "-F", f"{name}=@{path};filename={name};type=application/octet-stream", url,
                )  # fmt: skip

        await written_back()
        before, start = children_cpu(), time.perf_counter()
        with load(result.load_upload, store.pid, pinot.process.pid):
            async with asyncio.TaskGroup() as group:
                for path in files:
                    group.create_task(upload(path))
        result.script_upload = time.perf_counter() - start
        result.curl_cpu = children_cpu() - before
        async with HttpPinotController(pinot.url) as controller:
            uploaded = len(await controller.segments(TABLE))
    await asyncio.to_thread(shutil.rmtree, folder)
    if len(files) != result.segments or uploaded < result.segments:
        raise RuntimeError(f"the script moved {len(files)} files, Pinot has {uploaded} segments")


async def activate(
    store: Bucket, workdir: Path, size: int, concurrency: int, result: Result
) -> None:
    """az2 on an empty emulator: ``/activate?zone=az1`` to ``ACTIVE``, CPU and RSS sampled."""
    async with receiver(workdir, "pinot-az2") as pinot:
        document = agent_document("az2", "standby", store, pinot.url, workdir, concurrency)
        az2 = AgentProcess("az2", document, workdir)
        await started(az2)
        try:
            pid = az2.pid
            assert pid is not None
            await asyncio.sleep(0.5)  # settled after start
            result.rss_idle = rss(pid)
            peak, cpu = result.rss_idle, cpu_seconds(pid)
            await written_back()
            async with aiohttp.ClientSession() as http:
                with load(result.load_agent, store.pid, pinot.process.pid):
                    start = time.perf_counter()
                    # force: az1's process has exited, but a stop that outlasted its grace was a
                    # SIGKILL, which leaves its lease live until the TTL ends
                    query = {"zone": "az1", "force": "true"}
                    async with http.post(f"{az2.url}/activate", params=query) as answer:
                        if answer.status != 202:
                            raise RuntimeError(f"/activate: {answer.status} {await answer.text()}")
                    result.accepted = time.perf_counter() - start
                    while True:
                        status = await get_json(http, f"{az2.url}/status")
                        peak = max(peak, rss(pid))
                        if status["state"] == "ACTIVE":
                            break
                        if status["state"] == "FAILED":
                            raise RuntimeError(f"activation failed: {status['operation']}")
                        await asyncio.sleep(_poll_interval(status))
                    result.activation = time.perf_counter() - start
                    result.agent_cpu = cpu_seconds(pid) - cpu
                result.rss_peak = max(peak, rss(pid, "VmHWM"))
                operation = status["operation"]
            phases = {p["name"]: p for p in operation["phases"]}
            result.phases = [(name, p["seconds"] or 0.0) for name, p in phases.items()]
            result.rehydration = phases["rehydrate-segments"]["seconds"] or 0.0
            result.operation = float(operation["durationSeconds"])
            result.detail = phases["rehydrate-segments"]["detail"]
            async with HttpPinotController(pinot.url) as controller:
                restored = len(await controller.segments(TABLE))
        finally:
            await az2.stop()
    if restored < result.segments:
        raise RuntimeError(f"the activation restored {restored} of {result.segments} segments")


POLL_MOVING = 0.02
POLL_FIXED = 0.01
"""``/status`` polling while segments move, and otherwise: the end of an activation is seen
``POLL_FIXED / 2`` late on average (at 20 ms throughout, the fixed cost of 0.1-0.4 s carried
about 10 ms of polling); faster polls would cost the agent CPU on the very path measured, and
it answers fewer while it moves bytes."""


def _poll_interval(status: dict[str, Any]) -> float:
    operation = status.get("operation") or {}
    return POLL_MOVING if operation.get("phase") == "rehydrate-segments" else POLL_FIXED


async def measure(options: argparse.Namespace, count: int, size_mb: float, workdir: Path) -> Result:
    size = int(size_mb * MIB)
    (workdir / "secrets" / SECRET).mkdir(parents=True)
    async with bucket(options.store, workdir) as store:
        for key, value in store.secrets.items():
            (workdir / "secrets" / SECRET / key).write_text(value)
        table = await back_up(store, workdir, count, size, options.concurrency)
        result = Result(count, size)
        await script(store, workdir, size, table, options.concurrency, result)
        await activate(store, workdir, size, options.concurrency, result)
    return result


def verdicts(results: list[Result]) -> bool:
    checks: list[tuple[str, bool]] = []
    for r in results:
        what = f"{r.size / MIB:g} MiB"
        fixed = (f"{what}: fixed cost {r.fixed:.2f} s (< {FIXED_LIMIT} s)", r.fixed < FIXED_LIMIT)
        if r.size < 4 * MIB:  # a run of a segment or two times the fixed cost, nothing else
            checks.append(fixed)
            continue
        checks += [
            (
                f"{what}: activation {r.script / r.activation:.2f}x the script (>= "
                f"{ACTIVATION_RATIO}x)",
                r.script / r.activation >= ACTIVATION_RATIO,
            ),
            (
                f"{what}: rehydration {r.rehydration / r.floor:.2f}x the faster floor (<= "
                f"{FLOOR_MARGIN})",
                r.rehydration / r.floor <= FLOOR_MARGIN,
            ),
            fixed,
            (
                f"{what}: agent CPU/MB {r.agent_cpu / r.curl_cpu:.2f}x curl's (<= {CPU_RATIO}x)",
                r.agent_cpu / r.curl_cpu <= CPU_RATIO,
            ),
        ]
    moving = [r for r in results if r.size >= 4 * MIB]  # a 1 MiB run times the fixed cost
    if len(moving) > 1:
        peaks = [r.rss_peak for r in moving]
        spread = max(peaks) / min(peaks)
        checks.append(
            (
                f"peak RSS across sizes from 4 MiB {spread:.2f}x (<= {RSS_SPREAD}x)",
                spread <= RSS_SPREAD,
            )
        )
    for text, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {text}")
    return all(ok for _, ok in checks)


async def run(options: argparse.Namespace) -> bool:
    counts = [int(c) for c in options.segments.split(",")]
    sizes = [float(s) for s in options.size_mb.split(",")]
    if len(counts) != len(sizes):
        raise SystemExit("--segments and --size-mb need as many values each")
    print(
        f"store={options.store}, concurrency {options.concurrency}, python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    results = []
    for count, size_mb in zip(counts, sizes, strict=True):
        runs = []
        for number in range(1, options.repeat + 1):
            with scratch_dir() as workdir:
                runs.append(await measure(options, count, size_mb, workdir))
            if options.repeat > 1:
                print(f"run {number} of {options.repeat}:")
            print("\n".join(runs[-1].describe()), flush=True)
        if options.repeat > 1:
            results.append(median_result(runs))
            print(f"median of {options.repeat} runs:")
            print("\n".join(results[-1].describe()), flush=True)
        else:
            results.append(runs[0])
    return verdicts(results)


def median_result(runs: list[Result]) -> Result:
    """Each figure's median over ``runs`` (script and agent alternate within every run); the
    phases are those of the run whose activation is the median."""
    middle = sorted(runs, key=lambda r: r.activation)[len(runs) // 2]
    result = replace(middle)
    for name in (f.name for f in fields(Result) if f.type in ("float", "int")):
        setattr(result, name, statistics.median(getattr(r, name) for r in runs))
    result.detail = f"medians of {len(runs)} runs; phases of the median activation"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store", choices=["s3", "seaweedfs", "file"], default="s3")
    parser.add_argument("--segments", default="64,16", help="segments per run, comma-separated")
    parser.add_argument("--size-mb", default="8,64", help="segment size per run, MiB")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel transfers (all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; medians printed")
    sys.exit(0 if asyncio.run(run(parser.parse_args())) else 1)


if __name__ == "__main__":
    main()
