"""What every test server started as a subprocess needs: a free port and a clean stop."""

from __future__ import annotations

import subprocess

from az_agent.sandbox.postgres import free_port

__all__ = ["free_port", "stop_process"]


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
