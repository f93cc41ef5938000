"""Two activations at the same moment, one on each side: exactly one primary comes out.

Both zones have backups (az1 failed over to az2 once), az2 is paused, then each agent is asked
to activate from the other. Per-zone leases alone let both succeed and both lead for ever; the
group's primary record lets exactly one commit, and the other answers 409 naming the winner.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.e2e.conftest import REALTIME_TABLE, Zone, call, leads, prometheus, wait_for
from tests.e2e.test_planned_failover import fail_over, fully_backed_up, operation_done, status


async def post(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as client, client.post(url) as response:
        return response.status, await response.json()


async def test_simultaneous_cross_activations_leave_one_primary(
    stack: tuple[Zone, Zone], alertmanager: Any
) -> None:
    one, two = stack
    await one.start()
    await two.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await one.pinot.cluster.commit_consuming(REALTIME_TABLE)
    await wait_for(lambda: fully_backed_up(one), "zone 1 to back up")
    await fail_over(one, two, alertmanager.url)
    await wait_for(lambda: fully_backed_up(two), "zone 2 to back up")
    before = (await status(two))["primary"]
    assert before["zone"] == "az2"

    await call("POST", f"{two.url}/pause", expect=200)
    answers = await asyncio.gather(
        post(f"{two.url}/activate?zone=az1"), post(f"{one.url}/activate?zone=az2")
    )
    codes = sorted(code for code, _ in answers)
    assert codes == [202, 409], answers
    refused = next(body for code, body in answers if code == 409)
    winner = one if answers[1][0] == 202 else two
    loser = two if winner is one else one
    assert refused["primaryZone"] == "az2" or refused["primaryZone"] == winner.name, refused

    await wait_for(lambda: operation_done(winner), f"{winner.name} to activate")
    await wait_for(lambda: leads(winner), f"{winner.name} to lead")
    for zone in (one, two):
        # Each agent reads the record once a lease round: the loser may still show the last one.
        async def reads_the_winner(zone: Zone = zone) -> dict[str, Any] | None:
            primary: dict[str, Any] = (await status(zone))["primary"]
            return primary if primary["zone"] == winner.name else None

        primary = await wait_for(reads_the_winner, f"{zone.name} to read the new primary", 10)
        assert primary["term"] == before["term"] + 1
    assert (await status(loser))["state"] != "ACTIVE"
    assert not (await status(loser))["leader"]
    metrics = await prometheus(winner)
    assert metrics["az_agent_primary_term"] == before["term"] + 1
    assert metrics["az_agent_primary"] == 1
