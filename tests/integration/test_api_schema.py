"""schemathesis against a live agent: every answer matches the OpenAPI document, with all checks.

The agent is built and served as ``az-agent run`` serves it (``build_agent`` + ``serve``) on
127.0.0.1: a standby zone with an empty file bucket and a Pinot (the emulator) that answers, so
every dependency is up and the POSTs that would start real work answer 404 (nothing to activate
from) or 409 (nothing to pause or resume): nothing is ever written. schemathesis runs as its
own process (its CLI, all checks, a fixed seed), once with the bearer token and once without;
its JSON report must count at least ``MIN_CASES`` generated cases and no failure.

Generation is deterministic and runs on one worker, so every run sends the same cases whatever
the machine's load: with two workers the same seed gave 204, 696 or 1,188 cases with the token,
and the 204 of a loaded machine failed the count (deterministic on one worker: 1,188 each time,
9-10 s idle, 18-22 s under load).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from az_agent.agent.config import parse_config
from az_agent.agent.http.auth import TOKEN_ENV
from az_agent.agent.wiring import build_agent, serve
from az_agent.emulators.pinot import PinotEmulator
from az_agent.sandbox.postgres import free_port

TOKEN = "schemathesis-token"
MIN_CASES = 500
CONFIG = """\
[checks.positive_data_acceptance]
# Schema-valid requests an agent in this state refuses by design (a standby has nothing to
# pause; an empty bucket has nothing to activate from; a latestTime may name a time after now).
expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
"""


@pytest.fixture
async def agent_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    async with contextlib.AsyncExitStack() as stack:
        async for url in _served(stack, tmp_path, monkeypatch):
            yield url
    bucket = tmp_path / "bucket"
    # The standby's replicas publish its health in the background, whatever the API answers.
    background = {Path("az2/health.json")}
    written = [
        p.relative_to(bucket)
        for p in bucket.rglob("*")
        if p.is_file()
        and not p.relative_to(bucket).parts[0].startswith(".az-")
        and p.relative_to(bucket) not in background
    ]
    assert written == [], "a refused POST wrote to the bucket"


async def _served(
    stack: contextlib.AsyncExitStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    port = free_port()
    pinot = await stack.enter_async_context(PinotEmulator(tmp_path / "pinot"))
    raw = {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(tmp_path / "bucket")}}},
        "az-service": {
            "config": {
                "zone": "az2",
                "role": "standby",
                "standby": {"mode": "warm"},  # /status with every field of a warm standby
                "secretsDir": str(tmp_path / "secrets"),
                "http": {"host": "127.0.0.1", "port": port},
                "pinot": {"controllerUrl": pinot.url},
                "postgres": {"databases": []},
            }
        },
    }
    config = parse_config(raw, environ={})
    async with build_agent(config) as agent:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(agent, config, ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            yield f"http://127.0.0.1:{port}"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def schemathesis(url: str, workdir: Path, *headers: str) -> dict[str, Any]:
    """Run schemathesis against ``url``; its JSON run report."""
    (workdir / "schemathesis.toml").write_text(CONFIG)
    report = workdir / "report.json"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json"),
        *("--checks", "all", "--max-examples", "500", "--seed", "20261204"),
        *("--generation-deterministic", "--workers", "1"),
        *("--report", "json", "--report-json-path", str(report), "--output-truncate", "false"),
        *(item for header in headers for item in ("--header", header)),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 240)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    result: dict[str, Any] = json.loads(report.read_text())
    return result


@pytest.mark.parametrize("token", [True, False], ids=["with-token", "without-token"])
async def test_schemathesis_finds_nothing(agent_url: str, tmp_path: Path, token: bool) -> None:
    headers = [f"Authorization: Bearer {TOKEN}"] if token else []
    report = await schemathesis(agent_url, tmp_path, *headers)
    cases = report["test_cases"]
    assert cases["generated"] >= MIN_CASES, cases
    assert (cases["with_failures"], report["failures"], report["errors"]) == (0, [], []), report
    assert report["operations"]["tested"] == report["operations"]["total"] == 7, report
