"""A zone's agent as its own process (``az-agent run --config FILE``), for the drill.

The drill SIGKILLs the primary's agent to rehearse an unplanned failover, which an agent run
inside the drill's own process could not survive. Each agent starts in a session of its own,
so a Ctrl-C in the terminal reaches only the drill, which then stops the agents in order; on
Linux each also gets SIGTERM when the drill itself dies without cleaning up (SIGKILL), so no
agent outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from az_agent.agent.config import ENV_PREFIX

PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux ``prctl``)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class AgentProcessError(Exception):
    """The agent process exited or never served."""


class AgentProcess:
    """One agent process; ``raw`` is its configuration document (keys as in the Helm values)."""

    def __init__(self, zone: str, raw: dict[str, Any], directory: Path) -> None:
        self.zone = zone
        http = raw["az-service"]["config"]["http"]
        self.url = f"http://{http['host']}:{http['port']}"
        self.port = int(http["port"])
        self.config_file = directory / f"agent-{zone}.yaml"
        self.config_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        self.log_file = directory / f"agent-{zone}.log"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, within: float = 60.0) -> None:
        """Start it and wait until it serves with its state recovered from the bucket."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        with self.log_file.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "az_agent.cli",
                "run",
                "--config",
                str(self.config_file),
                "--log-level",
                "WARNING",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as client:
            while not await self._serving(client):
                if self._process.returncode is not None:
                    raise AgentProcessError(
                        f"zone {self.zone}'s agent exited with {self._process.returncode}; "
                        f"see {self.log_file}"
                    )
                if time.monotonic() > deadline:
                    raise AgentProcessError(f"zone {self.zone}'s agent did not serve in {within} s")
                await asyncio.sleep(0.1)

    async def _serving(self, client: aiohttp.ClientSession) -> bool:
        try:
            async with client.get(f"{self.url}/healthz") as answer:
                body = await answer.json()
                return answer.status == 200 and not body.get("recovering")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, the lease stays as it was (an unplanned loss)."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def stop(self, within: float = 20.0) -> None:
        """SIGTERM and wait for a clean exit; SIGKILL after ``within`` seconds. Safe to call
        on a process never started or already gone, and when cancelled (it still kills)."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        try:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), within)
        except TimeoutError:
            await self.kill()
        except asyncio.CancelledError:
            await asyncio.shield(self.kill())
            raise

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        text = self.log_file.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


__all__ = ["AgentProcess", "AgentProcessError"]
