"""``az-agent sandbox`` as a user runs it: a real process, stopped by SIGTERM as by Ctrl-C, and
a second one in the same folder that reports the zones as the first left them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from az_agent.sandbox.postgres import free_port

BANNER = "az-agent sandbox is up"
TEMP_DIRS = "az-sandbox-az*"


class Sandbox:
    """One ``az-agent sandbox`` process; its stdout is collected line by line."""

    def __init__(self, directory: Path, ports: tuple[int, int], *, postgres: bool) -> None:
        self.directory, self.ports, self.postgres = directory, ports, postgres
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, within: float = 120) -> str:
        """Start it and return its banner, once printed."""
        command = [sys.executable, "-m", "az_agent.cli", "sandbox", "--dir", str(self.directory)]
        command += ["--ports", *map(str, self.ports)]
        if not self.postgres:
            command.append("--no-postgres")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("AZ_AGENT")}
        self.process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = asyncio.create_task(self._read())
        deadline = time.monotonic() + within
        while not any(BANNER in line for line in self.lines):
            assert self.process.returncode is None, f"sandbox exited: {self.lines}"
            assert time.monotonic() < deadline, f"no banner: {self.lines}"
            await asyncio.sleep(0.05)
        return next(line for line in self.lines if BANNER in line)

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode().rstrip())

    async def terminate(self, within: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), within)
        assert self._reader is not None
        await self._reader
        return code

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader


@contextlib.asynccontextmanager
async def sandbox(directory: Path, *, postgres: bool = False) -> AsyncIterator[Sandbox]:
    running = Sandbox(directory, (free_port(), free_port()), postgres=postgres)
    try:
        yield running
    finally:
        await running.kill()


def _is_alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _alive_after(pids: list[int], within: float = 10) -> list[int]:
    """The ``pids`` still running after up to ``within`` seconds (pg_ctl returns when the
    server removed its pid file; the process exits a moment later)."""
    deadline = time.monotonic() + within
    while True:
        alive = [pid for pid in pids if _is_alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(0.05)


def _sandbox_folders() -> set[Path]:
    return set(Path("/tmp").glob(TEMP_DIRS))


def _postmasters(directories: list[Path]) -> list[int]:
    return [int((d / "data" / "postmaster.pid").read_text().split()[0]) for d in directories]


async def _call(method: str, url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client, client.request(method, url) as answer:
        body: dict[str, Any] = await answer.json()
        return body


async def _port_is_free(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_sigterm_stops_a_sandbox_without_postgres(tmp_path: Path) -> None:
    async with sandbox(tmp_path / "sandbox") as running:
        banner = await running.start()
        assert "zone az1 (ACTIVE)" in banner
        assert "zone az2 (STANDBY)" in banner
        assert await running.terminate() == 0
        assert running.lines[-1] == "sandbox stopped", running.lines
        for port in running.ports:
            assert await _port_is_free(port)


async def test_sigterm_stops_the_postgres_servers_and_removes_their_folders(
    tmp_path: Path,
) -> None:
    before = _sandbox_folders()
    async with sandbox(tmp_path / "sandbox", postgres=True) as running:
        banner = await running.start()
        assert "postgres: two throwaway servers" in "\n".join(running.lines), running.lines
        assert BANNER in banner
        folders = sorted(_sandbox_folders() - before)
        assert len(folders) == 2, folders
        pids = _postmasters(folders)
        assert all(_is_alive(pid) for pid in pids)

        assert await running.terminate() == 0
        assert await _alive_after(pids) == [], "PostgreSQL servers left running"
        assert _sandbox_folders() & set(folders) == set(), "temporary folders left behind"


async def test_a_second_sandbox_shows_the_zones_as_the_first_left_them(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    async with sandbox(directory) as first:
        await first.start()
        one, two = (f"http://127.0.0.1:{port}" for port in first.ports)
        deadline = time.monotonic() + 30
        while not (await _call("GET", f"{one}/status"))["leading"]:
            assert time.monotonic() < deadline, "zone az1 never led"
            await asyncio.sleep(0.1)
        paused = await _call("POST", f"{one}/pause")
        assert paused["state"] == "PAUSED", paused
        await _call("POST", f"{two}/activate?zone=az1")
        while (await _call("GET", f"{two}/status"))["state"] != "ACTIVE":
            assert time.monotonic() < deadline + 60, "zone az2 never activated"
            await asyncio.sleep(0.1)
        assert await first.terminate() == 0

    async with sandbox(directory) as second:
        banner = await second.start()
        assert "zone az1 (STANDBY)" in banner, second.lines
        assert "zone az2 (ACTIVE)" in banner, second.lines
        text = "\n".join(second.lines)
        assert "The failover handshake, from az2 to az1:" in text, text
        assert 'activate?zone=az2"' in text, text
        assert await second.terminate() == 0
