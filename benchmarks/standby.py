"""Standby benchmarks: how long an activation takes, by standby mode, beside a cold baseline.

    python -m benchmarks.standby [--only warm|kill|sick|brownout] [--segments 100,1000]
        [--delta 5] [--size-kb 64] [--partitions 4] [--repeat 3] [--trials 3] [--brownouts 20]

One command runs named sections (``--only`` picks some); each prints its figures and its
verdict, and the command exits 1 when a verdict fails. Sections:

* ``warm``: for each count of ``--segments``, zone az1 (an agent on a Pinot emulator) backs up
  that many segments to a file bucket and zone az2, ``standby.mode: warm``, follows them into
  its own emulator; ``--delta`` more segments are committed after az2's last follow step, az1
  is paused (its flush commits the consuming segments too), and az2 is activated. The baseline,
  measured in the same run on a copy of the same bucket, is a cold activation: a fresh zone with
  an empty Pinot restores everything. Each count runs ``--repeat`` times (from scratch); the
  verdicts are on the medians: every warm activation under 5 s; the warm time grows by less
  than 1.5x from the first count to the last.
* ``kill``, ``sick``, ``brownout`` (:mod:`benchmarks.takeover`): the automatic failover with
  real ``az-agent run`` processes on moto: takeover after SIGKILL of the primary's agent
  within TTL + grace + 5 s, of a zone whose Pinot died within ``unhealthySeconds`` + 10 s,
  and 0 takeovers in ``--brownouts`` bucket brownouts shorter than the renew deadline.

Emulators run in their own processes (their segment building and uploads do not share the
agents' event loop); the agents run in this one, as ``az-agent run`` builds them, over HTTP to
the emulators and on the file store. Times are from the ``/activate`` call to ``ACTIVE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.config import AgentConfig
from az_agent.agent.daemon import Agent, AgentDeps
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.operations.requests import ActivateRequest, PauseRequest
from az_agent.agent.operations.states import AgentState
from az_agent.drivers.alerts import open_silence_manager
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.storage.file import FileObjectStore
from az_agent.state import SystemClock, load_catalog
from benchmarks import takeover
from benchmarks.segment_backup import written_back
from tests.serving import serving
from tests.zoneconfig import file_zone_config

TABLE = "bench"
WARM_LIMIT_SECONDS = 5.0
GROWTH_LIMIT = 1.5


@dataclass
class Emulator:
    url: str
    process: asyncio.subprocess.Process


@contextlib.asynccontextmanager
async def emulator(data: Path, size: int, partitions: int | None) -> AsyncIterator[Emulator]:
    """``az-agent pinot-emulator`` in a subprocess; with ``partitions``, a REALTIME table."""
    seed = ["--seed-tables", f"{TABLE}:REALTIME:{partitions}"] if partitions else []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "az_agent.cli", "pinot-emulator", "--port", "0", "--data",
        str(data), "--segment-size", str(size), *seed,
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


async def generate(url: str, count: int) -> None:
    """Make the emulator commit ``count`` segments of the table now."""
    timeout = aiohttp.ClientTimeout(total=600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(f"{url}/_emulator/tables/{TABLE}/generate?count={count}") as response,
    ):
        response.raise_for_status()


agent_config = file_zone_config


@contextlib.asynccontextmanager
async def running(config: AgentConfig) -> AsyncIterator[Agent]:
    """An agent as ``az-agent run`` builds it (no HTTP server, no PostgreSQL, no alerts)."""
    clock, metrics = SystemClock(), AgentMetrics(config.zone)
    async with contextlib.AsyncExitStack() as stack:
        store = FileObjectStore(Path(config.storage.file.path))
        stack.push_async_callback(store.close)
        pinot = await stack.enter_async_context(
            HttpPinotController(config.service.pinot.controller_url, timeout_seconds=120)
        )
        silences = open_silence_manager("", matchers=[], created_by="az-agent-bench")
        stack.push_async_callback(silences.close)
        backup = SegmentBackupLoop(pinot, config.service.pinot, metrics, clock)
        agent = Agent(AgentDeps(config, store, clock, pinot, None, silences, backup, None, metrics))
        async with serving(agent, ready_within=30):
            yield agent


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, within: float, poll: float = 0.1
) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(poll)


async def backed_up(bucket: Path, zone: str) -> tuple[int, int]:
    """(live segments, last entry) of ``zone``'s backup."""
    async with FileObjectStore(bucket) as store:
        catalog = await load_catalog(store, zone)
    return catalog.segment_count, catalog.last_seq


async def activate(agent: Agent, source: str, within: float = 1800) -> tuple[float, str]:
    """Activate ``agent`` from ``source``: seconds to ACTIVE, and the rehydration's detail."""
    start = time.perf_counter()
    await agent.activate(ActivateRequest(zone=source))

    async def active() -> bool:
        if agent.state is AgentState.FAILED:
            raise RuntimeError(f"activation failed: {agent.status()['operation']}")
        return agent.state is AgentState.ACTIVE

    await until(active, f"zone {agent.zone} to become ACTIVE", within, poll=0.005)
    seconds = time.perf_counter() - start
    phases = agent.status()["operation"]["phases"]
    slowest = sorted(phases, key=lambda p: -(p["seconds"] or 0))[:3]
    rehydrate = next(p for p in phases if p["name"] == "rehydrate-segments")
    times = ", ".join(f"{p['name']} {p['seconds'] or 0:.2f} s" for p in slowest)
    return seconds, f"{rehydrate['detail']} (slowest phases: {times})"


# ----------------------------------------------------------------------------- warm section


@dataclass
class WarmRun:
    segments: int
    followed: int
    delta: int
    warm_seconds: float
    warm_detail: str
    cold_seconds: float
    cold_detail: str

    def describe(self) -> str:
        return (
            f"{self.segments:>6} | {self.followed:>8} | {self.delta:>5} | "
            f"{self.warm_seconds:>7.2f} | "
            f"{self.cold_seconds:>7.2f} | {self.warm_seconds / self.cold_seconds:>9.3f}"
        )


async def warm_once(workdir: Path, count: int, options: argparse.Namespace) -> WarmRun:
    bucket, cold_bucket = workdir / "bucket", workdir / "bucket-cold"
    size = options.size_kb << 10
    warm = {"role": "standby", "standby": {"mode": "warm", "followIntervalSeconds": 3600}}
    async with (
        emulator(workdir / "pinot-az1", size, options.partitions) as one,
        emulator(workdir / "pinot-az2", size, None) as two,
    ):
        await generate(one.url, count)
        async with (
            running(agent_config(bucket, "az1", one.url, role="active")) as az1,
            running(agent_config(bucket, "az2", two.url, **warm)) as az2,
        ):
            follower = az2.follower
            assert follower is not None

            async def at_least(n: int) -> bool:
                return (await backed_up(bucket, "az1"))[0] >= n

            await until(lambda: at_least(count), f"az1 to back up {count} segments", 900)
            tail = (await backed_up(bucket, "az1"))[1]
            follower.wake()

            async def followed() -> bool:
                assert follower is not None
                if follower.last_error is not None:
                    raise RuntimeError(f"follow step failed: {follower.last_error}")
                return follower.followed_seq >= tail

            await until(followed, "az2 to follow az1", 900)
            before_delta = (await backed_up(bucket, "az1"))[0]
            await generate(one.url, options.delta)
            await until(lambda: at_least(before_delta + options.delta), "the delta", 300)
            status, _ = await az1.pause(PauseRequest())
            if status != 200:
                raise RuntimeError(f"az1's pause answered {status}")
            await asyncio.to_thread(
                shutil.copytree, bucket, cold_bucket, ignore=shutil.ignore_patterns(".az-tmp")
            )  # the agents' writes in flight are left out: only committed objects count
            await written_back()  # the copy's writes must not slow the warm run
            total = (await backed_up(bucket, "az1"))[0]
            warm_seconds, warm_detail = await activate(az2, "az1")
    async with emulator(workdir / "pinot-cold", size, None) as fresh:
        cold = agent_config(cold_bucket, "az2", fresh.url, role="standby")
        async with running(cold) as cold_agent:
            cold_seconds, cold_detail = await activate(cold_agent, "az1")
    return WarmRun(
        segments=total,
        followed=before_delta,
        delta=total - before_delta,
        warm_seconds=warm_seconds,
        warm_detail=warm_detail,
        cold_seconds=cold_seconds,
        cold_detail=cold_detail,
    )


async def warm_section(options: argparse.Namespace) -> bool:
    counts = [int(c) for c in options.segments.split(",")]
    print(
        f"warm standby: activation after following N segments vs a cold activation of the same "
        f"bucket ({options.size_kb} KiB segments, {options.partitions} partitions, delta "
        f"{options.delta} + the pause's flush)"
    )
    print("     N | followed | delta | warm, s | cold, s | warm/cold")
    runs: list[WarmRun] = []  # the median run of each count
    for count in counts:
        repeats: list[WarmRun] = []
        for _ in range(options.repeat):
            with scratch_dir() as workdir:
                run = await warm_once(workdir, count, options)
            repeats.append(run)
            print(run.describe())
            print(f"         warm: {run.warm_detail}; cold: {run.cold_detail}")
        median = sorted(repeats, key=lambda r: r.warm_seconds)[len(repeats) // 2]
        median.cold_seconds = statistics.median(r.cold_seconds for r in repeats)
        runs.append(median)
        if len(repeats) > 1:
            print(f"median of {len(repeats)}:\n{median.describe()}")
    ok = True
    slow = [r for r in runs if r.warm_seconds >= WARM_LIMIT_SECONDS]
    print(
        f"  every warm activation under {WARM_LIMIT_SECONDS:g} s: "
        f"{'yes' if not slow else 'NO'} (max {max(r.warm_seconds for r in runs):.2f} s)"
    )
    ok = ok and not slow
    if len(runs) > 1:
        growth = runs[-1].warm_seconds / runs[0].warm_seconds
        within = growth < GROWTH_LIMIT
        print(
            f"  warm growth {runs[0].segments} -> {runs[-1].segments} segments: {growth:.2f}x "
            f"(limit {GROWTH_LIMIT}x): {'yes' if within else 'NO'}"
        )
        ok = ok and within
    return ok


# -------------------------------------------------------------------------------- driver

Section = Callable[[argparse.Namespace], Awaitable[bool]]


async def kill_takeover(options: argparse.Namespace) -> bool:
    return await takeover.run_sections({"kill"}, options.trials, options.brownouts)


async def sick_takeover(options: argparse.Namespace) -> bool:
    return await takeover.run_sections({"sick"}, options.trials, options.brownouts)


async def brownouts(options: argparse.Namespace) -> bool:
    return await takeover.run_sections({"brownout"}, options.trials, options.brownouts)


SECTIONS: dict[str, Section] = {
    "warm": warm_section,
    "kill": kill_takeover,
    "sick": sick_takeover,
    "brownout": brownouts,
}
"""Named sections in the order they run; each returns whether its verdicts passed."""


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="az-bench-standby-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def run(options: argparse.Namespace) -> bool:
    print(f"store=file, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    ok = True
    for name in options.only or list(SECTIONS):
        ok = await SECTIONS[name](options) and ok
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--only", action="append", choices=list(SECTIONS), help="run this section (repeatable)"
    )
    parser.add_argument("--segments", default="100,1000", help="followed segment counts (warm)")
    parser.add_argument("--delta", type=int, default=5, help="segments after the last follow")
    parser.add_argument("--size-kb", type=int, default=64, help="segment size, KiB")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the table")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per count (warm): verdicts on the medians"
    )
    parser.add_argument("--trials", type=int, default=3, help="takeovers timed (kill, sick)")
    parser.add_argument("--brownouts", type=int, default=20, help="bucket brownouts played")
    logging.basicConfig(level=logging.ERROR)  # the agents' takeover warnings are expected here
    sys.exit(0 if asyncio.run(run(parser.parse_args())) else 1)


if __name__ == "__main__":
    main()
