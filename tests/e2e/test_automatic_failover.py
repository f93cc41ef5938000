"""Automatic mode: the standby runs the handshake itself once the active zone has gone silent.

It acts on an expired lease only: a planned pause (lease ``paused``) is the operator's handshake
and must be left alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from az_agent.agent.config import AgentConfig, parse_config
from tests.e2e.conftest import (
    AgentProcessFactory,
    Zone,
    activation_done,
    call,
    leads,
    status_of,
    wait_for,
)
from tests.e2e.test_unplanned import assert_restored, zone_one_dies


def automatic(config: AgentConfig, source: str, grace: float) -> AgentConfig:
    document: dict[str, Any] = config.model_dump(mode="json", by_alias=True)
    document["az-service"]["config"]["automaticFailover"] = {
        "enabled": True,
        "sourceZone": source,
        "graceSeconds": grace,
    }
    return parse_config(document, environ={})


async def test_standby_takes_over_a_dead_zone_by_itself(
    stack: tuple[Zone, Zone], agent_processes: AgentProcessFactory
) -> None:
    one, two = stack
    two.config = automatic(two.config, "az1", grace=1)
    old = agent_processes(one)
    await two.start()
    _, records = await zone_one_dies(one, old)
    killed_at = asyncio.get_running_loop().time()

    async def failed_over() -> dict[str, Any] | None:
        if (await status_of(two.url))["operation"] is None:
            return None  # not started yet
        return await activation_done(two.url)

    done = await wait_for(failed_over, "zone 2 to fail over by itself")
    waited = asyncio.get_running_loop().time() - killed_at
    assert waited >= one.config.service.lease.ttl_seconds, "it waited for the lease to expire"
    assert done["operation"]["request"]["zone"] == "az1"
    assert done["leader"] is True
    await assert_restored(one, two, records)


async def test_standby_leaves_a_planned_pause_to_the_operator(stack: tuple[Zone, Zone]) -> None:
    one, two = stack
    two.config = automatic(two.config, "az1", grace=0)
    await one.start()
    await two.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await call("POST", f"{one.url}/pause", expect=200)
    ttl = one.config.service.lease.ttl_seconds
    await asyncio.sleep(2 * ttl)
    status = await status_of(two.url)
    assert status["state"] == "STANDBY"
    assert status["operation"] is None
