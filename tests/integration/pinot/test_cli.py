"""``az-agent pinot-emulator`` as a process: flags, seeding, the generator, a clean SIGTERM stop."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from az_agent.drivers.pinot import HttpPinotController, TableRef, TableType
from az_agent.emulators.pinot.cli import main
from tests.integration.pinot.support import eventually

_RUN = "import sys; from az_agent.emulators.pinot.cli import main; sys.exit(main(sys.argv[1:]))"


async def test_cli_serves_seeds_generates_and_stops(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RUN,
        "--port=0",
        f"--data={tmp_path / 'data'}",
        "--seed-tables=events:REALTIME:3,logs:OFFLINE",
        "--segment-rate=600",
        "--segment-size=20000",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("pinot emulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()
        async with HttpPinotController(url) as client:
            assert await client.list_tables() == [
                TableRef("events", TableType.REALTIME),
                TableRef("logs", TableType.OFFLINE),
            ]
            ready = await eventually(
                lambda: client.backup_ready_segments(TableRef("events", TableType.REALTIME)),
                lambda found: len(found) >= 3,
            )
            assert all(s.llc_name is not None for s in ready)
            assert await client.backup_ready_segments(TableRef("logs", TableType.OFFLINE))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    assert (tmp_path / "data" / "state.json").exists()


def test_cli_rejects_bad_seed_tables(tmp_path: Path) -> None:
    assert main(["--data", str(tmp_path), "--seed-tables", "events:SIDEWAYS"]) == 2
    assert main(["--data", str(tmp_path), "--seed-tables", "events:REALTIME:0"]) == 2
