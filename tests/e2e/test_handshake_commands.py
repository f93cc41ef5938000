"""The handshake from a terminal: ``az-agent pause|activate|status|resume --url URL`` run as an
operator runs them (real processes) against two agents that run as processes too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from az_agent.emulators.pinot.seed import SeedTable
from az_agent.emulators.pinot.server import PinotEmulator
from az_agent.sandbox.postgres import free_port
from az_agent.sandbox.processes import AgentProcess
from tests.e2e.conftest import REALTIME_TABLE, TABLE, wait_for

TOKEN = "handshake-test-token"


async def az_agent(*args: str) -> tuple[int, str, str]:
    """``az-agent ARGS`` in a process of its own: exit code, stdout, stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AZ_AGENT")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "az_agent.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def zone_document(tmp_path: Path, zone: str, role: str, pinot_url: str) -> dict[str, Any]:
    (tmp_path / "token").write_text(TOKEN + "\n")
    return {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(tmp_path / "bucket")}}},
        "az-service": {
            "config": {
                "zone": zone,
                "role": role,
                "secretsDir": str(tmp_path / "secrets"),
                "http": {
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "tokenFile": str(tmp_path / "token"),
                },
                "lease": {"ttlSeconds": 4, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 1},
                "pinot": {"controllerUrl": pinot_url, "pollIntervalSeconds": 0.5},
                "postgres": {"databases": []},
            }
        },
    }


async def _status(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client, client.get(f"{url}/status") as answer:
        body: dict[str, Any] = await answer.json()
        return body


async def _backed_up(url: str, segments: int) -> bool:
    backups = (await _status(url))["backups"]["segments"]
    return bool(backups["segmentsBackedUp"] >= segments and backups["pending"] == 0)


@contextlib.asynccontextmanager
async def two_zones(
    tmp_path: Path, *, second_pinot: bool = True
) -> AsyncIterator[tuple[AgentProcess, AgentProcess, str]]:
    """az1 (active, 4 committed segments backed up) and az2 (standby) as processes; az2's
    Pinot is an emulator, or a port nobody listens on. Yields both agents and the token file."""
    async with contextlib.AsyncExitStack() as stack:
        pinot_one = await stack.enter_async_context(
            PinotEmulator(tmp_path / "pinot-az1", seed_tables=[SeedTable(TABLE, "REALTIME", 2)])
        )
        if second_pinot:
            pinot_two_url = (await stack.enter_async_context(PinotEmulator(tmp_path / "p2"))).url
        else:
            pinot_two_url = f"http://127.0.0.1:{free_port()}"
        for _ in range(2):
            await pinot_one.cluster.commit_consuming(REALTIME_TABLE)
        documents = (
            zone_document(tmp_path, "az1", "active", pinot_one.url),
            zone_document(tmp_path, "az2", "standby", pinot_two_url),
        )
        one = AgentProcess("az1", documents[0], tmp_path)
        two = AgentProcess("az2", documents[1], tmp_path)
        stack.push_async_callback(one.stop)
        stack.push_async_callback(two.stop)
        await asyncio.gather(one.start(), two.start())
        await wait_for(lambda: _backed_up(one.url, 4), "az1 to back up its segments", 30)
        yield one, two, str(tmp_path / "token")


async def test_the_whole_handshake_from_a_terminal(tmp_path: Path) -> None:
    async with two_zones(tmp_path) as (one, two, token):
        code, out, err = await az_agent("status", "--url", one.url)
        assert code == 0, err
        assert "zone az1: ACTIVE (leader, backing up)" in out, out
        assert "primary of group default: az1 (this zone)" in out, out

        code, out, err = await az_agent("pause", "--url", one.url, "--token-file", token, "--json")
        assert code == 0, err
        paused = json.loads(out)
        assert paused["state"] == "PAUSED", paused
        assert paused["operation"]["status"] == "succeeded"

        code, out, err = await az_agent(
            "activate", "--url", two.url, "--token-file", token, "--zone", "az1", "--wait"
        )
        assert code == 0, (out, err)
        assert "zone az2: ACTIVE" in out, out
        assert "succeeded (from az1)" in out, out
        for phase in ("claim-primary", "rehydrate-segments", "take-over-zone"):
            assert phase in out, out
        assert "ETA" in err, "the progress bar is drawn on stderr"

        code, out, err = await az_agent("status", "--url", two.url, "--json")
        assert code == 0, err
        status = json.loads(out)
        assert (status["state"], status["operation"]["status"]) == ("ACTIVE", "succeeded")
        assert status["primary"]["zone"] == "az2"

        code, out, err = await az_agent("resume", "--url", two.url, "--token-file", token)
        assert code == 0, err
        assert "state: ACTIVE" in out, out

        # A refusal: the server's error in one line, exit 1; with --json its body.
        code, out, err = await az_agent(
            "activate", "--url", two.url, "--token-file", token, "--zone", "az1"
        )
        assert code == 1
        assert err.strip() == "az-agent: activate: 409 conflict: cannot activate while ACTIVE"
        code, out, err = await az_agent("pause", "--url", two.url, "--json")
        assert code == 1
        assert json.loads(out)["httpStatus"] == 401
        assert json.loads(out)["error"] == "unauthorized"


async def test_wait_exits_1_when_the_activation_fails(tmp_path: Path) -> None:
    async with two_zones(tmp_path, second_pinot=False) as (one, two, token):
        code, _, err = await az_agent("pause", "--url", one.url, "--token-file", token)
        assert code == 0, err
        code, out, err = await az_agent(
            "activate", "--url", two.url, "--token-file", token, "--zone", "az1", "--wait", "--json"
        )
        assert code == 1, (out, err)
        status = json.loads(out)
        assert status["operation"]["status"] == "failed", status
        assert status["state"] == "FAILED", status
        assert "az-agent: activation failed:" in err, err


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    code, _, err = await az_agent("status", "--url", "localhost:8081")
    assert code == 2
    assert "must start with http://" in err
    code, _, err = await az_agent(
        "pause", "--url", "http://127.0.0.1:1", "--token-file", str(tmp_path / "missing")
    )
    assert code == 2
    assert "--token-file" in err
    code, _, err = await az_agent("activate", "--url", "http://127.0.0.1:1")
    assert code == 2, "--zone is required"
    code, _, err = await az_agent("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert "agent unreachable" in err
