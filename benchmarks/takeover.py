"""How fast the automatic failover takes over, and that a bucket brownout never makes it.

Sections of ``python -m benchmarks.standby`` (``--only kill,sick,brownout``), each against its
bound from the issue, measured with real ``az-agent run`` processes, moto as the bucket and a
Pinot emulator per zone (no PostgreSQL: the takeover's timing is the subject, not the restore):

* ``kill`` -- SIGKILL of the primary's agent: its lease stops moving; the standby must be
  ACTIVE within TTL + grace + 5 s.
* ``sick`` -- the primary's Pinot dies, its agent lives and publishes ``unhealthy``: the
  standby must be ACTIVE within ``unhealthySeconds`` + 10 s.
* ``brownout`` -- both agents reach the bucket through a proxy that goes dark for 60 % of the
  renew deadline, again and again; the standby judges with no grace: 0 takeovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from az_agent.agent.config import parse_config
from az_agent.emulators.pinot.seed import SeedTable
from az_agent.emulators.pinot.server import PinotEmulator
from az_agent.sandbox.postgres import free_port
from tests.e2e.conftest import AgentProcess, status_of, wait_for
from tests.servers.flaky_proxy import Brownout
from tests.servers.moto import MotoBackend

TTL, RENEW_DEADLINE, RETRY = 4.0, 3.0, 1.0
GRACE = 2.0
UNHEALTHY_SECONDS = 5.0
TABLE = "events"
COMMITS = 2
"""Segments committed per partition (2 partitions) and backed up before the failure."""


@dataclass(frozen=True, slots=True)
class Takeover:
    section: str
    trial: int
    seconds: float
    """From the failure to the standby's claim of the primary record (the takeover)."""
    active: float
    """From the failure to the standby ACTIVE (the restore done)."""
    bound: float
    phases: str


@dataclass
class TwoZones:
    """One fresh bucket prefix, a Pinot per zone and the two agents' processes."""

    one: AgentProcess
    two: AgentProcess
    pinot_one: PinotEmulator
    pinot_two: PinotEmulator


def zone_document(
    zone: str, role: str, storage: dict[str, Any], secrets: Path, pinot: str, **extra: Any
) -> dict[str, Any]:
    return {
        "global": {"cloudStorage": storage},
        "az-service": {
            "config": {
                "zone": zone,
                "role": role,
                "secretsDir": str(secrets),
                "http": {"host": "127.0.0.1", "port": free_port()},
                "lease": {
                    "ttlSeconds": TTL,
                    "renewDeadlineSeconds": RENEW_DEADLINE,
                    "retryPeriodSeconds": RETRY,
                },
                "pinot": {"controllerUrl": pinot, "pollIntervalSeconds": 0.5},
                "postgres": {"databases": []},
                **extra,
            }
        },
    }


@contextlib.asynccontextmanager
async def two_zones(
    moto: MotoBackend, root: Path, automatic: dict[str, Any], endpoint: str | None = None
) -> AsyncIterator[TwoZones]:
    """az1 active and az2 standby with ``automaticFailover`` = ``automatic``, both started."""
    settings, secrets = await moto.new_bucket()
    assert secrets is not None
    assert secrets.access_key is not None
    assert secrets.secret_key is not None
    if endpoint is not None:
        settings = moto.through(settings, endpoint)
    secret_dir = root / "secrets" / "cloud-storage-secret"
    secret_dir.mkdir(parents=True, exist_ok=True)
    (secret_dir / "accessKey").write_text(secrets.access_key.get_secret_value())
    (secret_dir / "secretKey").write_text(secrets.secret_key.get_secret_value())
    storage = settings.model_dump(mode="json", by_alias=True)
    async with contextlib.AsyncExitStack() as stack:
        pinot_one = await stack.enter_async_context(
            PinotEmulator(root / "pinot-az1", seed_tables=[SeedTable(TABLE, "REALTIME", 2)])
        )
        pinot_two = await stack.enter_async_context(PinotEmulator(root / "pinot-az2"))
        one = AgentProcess(
            parse_config(
                zone_document("az1", "active", storage, root / "secrets", pinot_one.url),
                environ={},
            ),
            root,
            {},
        )
        two = AgentProcess(
            parse_config(
                zone_document(
                    "az2",
                    "standby",
                    storage,
                    root / "secrets",
                    pinot_two.url,
                    automaticFailover={"enabled": True, "sourceZone": "az1", **automatic},
                ),
                environ={},
            ),
            root,
            {},
        )
        stack.push_async_callback(one.kill)
        stack.push_async_callback(two.kill)
        await one.start()
        await two.start()
        await wait_for(lambda: _leading(one.url), "zone 1 to lead", within=30)
        for _ in range(COMMITS):
            await pinot_one.cluster.commit_consuming(f"{TABLE}_REALTIME")
        await wait_for(lambda: _backed_up(one.url), "zone 1 to back its segments up", within=60)
        await wait_for(lambda: _judged(two.url, "health healthy"), "zone 2 to see zone 1 healthy")
        yield TwoZones(one, two, pinot_one, pinot_two)


async def _leading(url: str) -> bool:
    body = await status_of(url)
    return bool(body["leader"] and body["leading"])


async def _backed_up(url: str) -> bool:
    segments = (await status_of(url))["backups"]["segments"]
    return bool(segments["segmentsBackedUp"] >= 2 * COMMITS and segments["pending"] == 0)


async def _judged(url: str, words: str) -> bool:
    sentence = (await status_of(url))["automaticFailover"]["lastDecision"] or ""
    return words in sentence


async def until_active(
    zones: TwoZones, section: str, trial: int, bound: float, within: float = 120
) -> Takeover:
    """Time zone 2's claim of the primary and its ACTIVE state from now (the failure)."""
    start = time.monotonic()
    claimed: float | None = None

    async def active() -> dict[str, Any] | None:
        nonlocal claimed
        body = await status_of(zones.two.url)
        if claimed is None and (body["primary"] or {}).get("zone") == "az2":
            claimed = time.monotonic() - start
        return body if body["state"] == "ACTIVE" else None

    try:
        body = await wait_for(active, "zone 2 to be ACTIVE", within=within, interval=0.1)
    except AssertionError:
        print(await status_of(zones.two.url), zones.two.log_text(), sep="\n")
        raise
    done = time.monotonic() - start
    phases = ", ".join(
        f"{p['name']} {p['seconds']:.1f}s"
        for p in body["operation"]["phases"]
        if (p.get("seconds") or 0) >= 0.1
    )
    return Takeover(section, trial, claimed if claimed is not None else done, done, bound, phases)


async def _active(url: str) -> bool:
    return bool((await status_of(url))["state"] == "ACTIVE")


async def kill_section(moto: MotoBackend, trials: int) -> list[Takeover]:
    rows = []
    for trial in range(trials):
        with tempfile.TemporaryDirectory(prefix="takeover-kill-") as root:
            async with two_zones(moto, Path(root), {"graceSeconds": GRACE}) as zones:
                await zones.one.kill()
                rows.append(await until_active(zones, "kill", trial, TTL + GRACE + 5))
    return rows


async def sick_section(moto: MotoBackend, trials: int) -> list[Takeover]:
    rows = []
    automatic = {"graceSeconds": 600, "unhealthySeconds": UNHEALTHY_SECONDS}
    for trial in range(trials):
        with tempfile.TemporaryDirectory(prefix="takeover-sick-") as root:
            async with two_zones(moto, Path(root), automatic) as zones:
                await zones.pinot_one.stop()
                rows.append(await until_active(zones, "sick", trial, UNHEALTHY_SECONDS + 10))
    return rows


async def brownout_section(moto: MotoBackend, brownouts: int) -> tuple[int, int]:
    """(brownouts played, takeovers seen)."""
    proxy = Brownout(moto.endpoint)
    await proxy.start()
    takeovers = 0
    try:
        with tempfile.TemporaryDirectory(prefix="takeover-brownout-") as root:
            async with two_zones(moto, Path(root), {"graceSeconds": 0}, proxy.url) as zones:
                for _ in range(brownouts):
                    proxy.dark(True)
                    await asyncio.sleep(RENEW_DEADLINE * 0.6)
                    proxy.dark(False)
                    await asyncio.sleep(RENEW_DEADLINE)
                    body = await status_of(zones.two.url)
                    if body["state"] != "STANDBY" or body["operation"] is not None:
                        takeovers += 1
                        break
    finally:
        await proxy.stop()
    return brownouts, takeovers


def report(rows: list[Takeover]) -> bool:
    """Print one line per trial; True when every takeover met its bound."""
    ok = True
    for row in rows:
        met = row.seconds <= row.bound
        ok &= met
        print(
            f"  {row.section:<6} trial {row.trial}: primary claimed after {row.seconds:6.2f} s "
            f"(bound {row.bound:.0f} s, {row.seconds / row.bound:.2f}x) "
            f"{'ok' if met else 'MISSED'}; ACTIVE after {row.active:.2f} s ({row.phases})"
        )
    return ok


async def run_sections(sections: set[str], trials: int, brownouts: int) -> bool:
    moto = MotoBackend()
    moto.start()
    try:
        ok = True
        if "kill" in sections:
            print(
                f"automatic takeover after SIGKILL of the primary's agent (TTL {TTL:.0f} s, "
                f"grace {GRACE:.0f} s):"
            )
            ok &= report(await kill_section(moto, trials))
        if "sick" in sections:
            print(f"automatic takeover of a sick zone (unhealthySeconds {UNHEALTHY_SECONDS:.0f}):")
            ok &= report(await sick_section(moto, trials))
        if "brownout" in sections:
            played, takeovers = await brownout_section(moto, brownouts)
            print(
                f"bucket brownouts of {RENEW_DEADLINE * 0.6:.1f} s (renew deadline "
                f"{RENEW_DEADLINE:.0f} s, grace 0): {takeovers} takeovers in {played} brownouts"
            )
            ok &= takeovers == 0
        return ok
    finally:
        moto.stop()
