"""``az-agent drill`` as a user (and CI) runs it: a real process on small data, its JSON report,
and nothing left behind afterwards: no agent or PostgreSQL process, no port, no folder."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.pinot.models import TableRef, TableType
from az_agent.sandbox.drill import TABLE, Drill, DrillOptions, run_drill
from az_agent.sandbox.stack import postgres_available
from tests.integration.test_sandbox_command import _alive_after, _port_is_free

SMALL = ["--segments", "2", "--segment-size-kb", "16", "--rows", "20"]
PG_FOLDERS = "az-drill-az*"
REALTIME = TableRef(TABLE, TableType.REALTIME)


def _processes_mentioning(text: str) -> set[int]:
    """Live processes whose command line contains ``text`` (zombies excluded)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if text in command and state != "Z" and int(entry.name) != os.getpid():
            found.add(int(entry.name))
    return found


def _pg_folders() -> set[Path]:
    return set(Path("/tmp").glob(PG_FOLDERS))


def _folder_port(folder: Path) -> int | None:
    """The port its server was started on (``postmaster.opts`` outlives the server); None
    before one started, and then the folder counts as this test's."""
    try:
        words = (folder / "data" / "postmaster.opts").read_text().replace('"', " ").split()
    except OSError:
        return None
    return int(words[words.index("-p") + 1]) if "-p" in words else None


class DrillProcess:
    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.args = ["drill", "--json", "--dir", str(directory), *SMALL, *extra]
        if postgres_available() is not None:
            self.args.append("--no-postgres")
        self.process: asyncio.subprocess.Process | None = None
        self.stderr: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("AZ_AGENT")}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "az_agent.cli",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())

    async def finish(self, within: float) -> tuple[int, dict[str, Any]]:
        """The exit code and the JSON report."""
        assert self.process is not None
        assert self.process.stdout is not None
        out = await asyncio.wait_for(self.process.stdout.read(), within)
        code = await asyncio.wait_for(self.process.wait(), 30)
        assert self._reader is not None
        await self._reader
        assert out, f"no report; stderr:\n{self.text()}"
        report: dict[str, Any] = json.loads(out)
        return code, report

    async def wait_for_line(self, text: str, within: float) -> None:
        deadline = time.monotonic() + within
        while not any(text in line for line in self.stderr):
            assert self.process is not None
            assert self.process.returncode is None, self.text()
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.text()}"
            await asyncio.sleep(0.05)

    def text(self) -> str:
        return "\n".join(self.stderr)

    async def stop(self) -> None:
        """After a failed test: SIGTERM (the drill cleans up), SIGKILL if it hangs."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 60)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def agent_ports(self) -> list[int]:
        return [int(config["http"]["port"]) for config in self._agent_configs()]

    def postgres_ports(self) -> set[int]:
        """The ports of this drill's PostgreSQL servers: their folders are in the shared /tmp,
        where another test run's drill may have its own at the same time."""
        return {
            int(c["postgres"]["port"]) for c in self._agent_configs() if "port" in c["postgres"]
        }

    def _agent_configs(self) -> list[dict[str, Any]]:
        configs = []
        for zone in ("az1", "az2"):
            document = yaml.safe_load((self.directory / f"agent-{zone}.yaml").read_text())
            configs.append(document["az-service"]["config"])
        return configs


async def _nothing_left(drill: DrillProcess, pg_before: set[Path]) -> None:
    assert await _alive_after(sorted(_processes_mentioning(str(drill.directory)))) == [], (
        "agent processes left running"
    )
    ports = drill.postgres_ports()
    ours = set().union(*(_processes_mentioning(f" -p {port} ") for port in ports))
    servers = _processes_mentioning("/tmp/az-drill-az") & ours
    assert await _alive_after(sorted(servers)) == [], "PostgreSQL servers left running"
    folders = {f for f in _pg_folders() - pg_before if _folder_port(f) in (None, *ports)}
    assert folders == set(), "PostgreSQL folders left behind"
    for port in drill.agent_ports():
        assert await _port_is_free(port), f"port {port} still taken"


async def test_the_drill_passes_and_leaves_nothing_behind(tmp_path: Path) -> None:
    pg_before = _pg_folders()
    drill = DrillProcess(tmp_path / "drill")
    try:
        await drill.start()
        code, report = await drill.finish(within=240)
    finally:
        await drill.stop()
    assert code == 0, drill.text()
    assert report["verdict"] == "PASS", report
    assert report["nothingLost"] is True
    assert [p["name"] for p in report["phases"]] == [
        "planned switchover",
        "planned switch back",
        "unplanned failover",
    ]
    for phase in report["phases"]:
        assert phase["ok"], phase
        assert phase["nothingLost"], phase
        segments = phase["segments"]
        assert segments["committed"] >= 4, segments
        assert segments["present"] == segments["committed"], segments
        assert 0 < phase["rtoSeconds"] < 120, phase
        steps = [step["name"] for step in phase["steps"]]
        assert "rehydrate-segments" in steps, steps
        if postgres_available() is None:
            assert [db["identical"] for db in phase["databases"]] == [True, True], phase
            assert phase["dumpAgeSeconds"] is not None
        else:
            assert phase["databases"] is None
    assert report["phases"][0]["steps"][0]["name"] == "/pause of the old zone"
    assert report["phases"][2]["steps"][0]["name"] == "wait for its lease to expire"
    # Each phase moved fresh data: the committed segments grow from phase to phase.
    counts = [p["segments"]["committed"] for p in report["phases"]]
    assert counts == sorted(counts), counts
    assert counts[0] < counts[2], counts
    assert "phase 3/3: unplanned failover" in drill.text(), "progress is shown"
    await _nothing_left(drill, pg_before)


async def test_sigterm_mid_drill_stops_everything_it_started(tmp_path: Path) -> None:
    pg_before = _pg_folders()
    drill = DrillProcess(tmp_path / "drill")
    try:
        await drill.start()
        await drill.wait_for_line("phase 1/3", within=120)
        assert drill.process is not None
        agents = _processes_mentioning(str(drill.directory)) - {drill.process.pid}
        assert len(agents) == 2, agents
        drill.process.send_signal(signal.SIGTERM)
        code, report = await drill.finish(within=60)
    finally:
        await drill.stop()
    assert code == 1, drill.text()
    assert report["verdict"] == "FAIL"
    assert report["interrupted"].startswith("SIGTERM"), report
    assert await _alive_after(sorted(agents)) == []
    await _nothing_left(drill, pg_before)


async def test_a_lost_segment_fails_the_drill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verification is real: a segment removed from the new zone's Pinot right after the
    first activation is reported missing, and the verdict is FAIL."""
    removed: list[str] = []
    activation = Drill._activation

    async def lose_one(self: Drill, client: Any, accepted: Any, at: Any, phase: Any) -> None:
        await activation(self, client, accepted, at, phase)
        if removed:
            return
        controller = HttpPinotController(self.zones[phase.target].pinot.url)
        try:
            [segment, *_] = await controller.backup_ready_segments(REALTIME)
            await controller.delete_segment(REALTIME, segment.name)
        finally:
            await controller.close()
        removed.append(f"{REALTIME}/{segment.name}")

    monkeypatch.setattr(Drill, "_activation", lose_one)
    options = DrillOptions(segments=2, segment_size_kb=16, rows=20, postgres=False)
    report = await run_drill(options, Console(file=io.StringIO()))
    assert removed
    assert not report.passed
    first = report.phases[0]
    assert first.segments is not None
    assert first.segments.missing == removed, first
    assert first.segments.bytes_missing > 0
    document = report.to_json()
    assert (document["verdict"], document["phases"][0]["nothingLost"]) == ("FAIL", False)


async def test_bad_usage_exits_2_before_starting_anything(tmp_path: Path) -> None:
    (tmp_path / "left-over").write_text("a previous drill's data")
    for args in (["--dir", str(tmp_path)], ["--segments", "0"]):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "az_agent.cli", "drill", *args, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 2, err
        assert err.decode().startswith("az-agent: drill: "), err


async def test_agents_do_not_outlive_a_sigkilled_drill(tmp_path: Path) -> None:
    """SIGKILL leaves the drill no chance to clean up: its agents get SIGTERM from the kernel
    (the parent-death signal) and stop by themselves."""
    drill = DrillProcess(tmp_path / "drill", "--no-postgres")
    try:
        await drill.start()
        await drill.wait_for_line("phase 1/3", within=120)
        assert drill.process is not None
        agents = _processes_mentioning(str(drill.directory)) - {drill.process.pid}
        assert len(agents) == 2, agents
        drill.process.kill()
        await drill.process.wait()
        assert await _alive_after(sorted(agents), within=30) == [], "agents outlived the drill"
    finally:
        await drill.stop()
