"""Automatic mode: the standby runs the handshake itself once the active zone has gone silent.

It acts on an expired lease only: a planned pause (lease ``paused``) is the operator's handshake
and must be left alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from az_agent.agent.config import AgentConfig, parse_config
from az_agent.agent.leadership import automatic as leadership_automatic
from az_agent.agent.leadership.automatic import source_is_gone
from az_agent.state import LeaseObservation, LeaseState
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


async def test_standby_leaves_a_planned_pause_to_the_operator(
    stack: tuple[Zone, Zone], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = stack
    two.config = automatic(two.config, "az1", grace=0)
    judged: list[tuple[LeaseObservation, bool]] = []

    def judging(observation: LeaseObservation, grace_seconds: float) -> bool:
        gone = source_is_gone(observation, grace_seconds)
        judged.append((observation, gone))
        return gone

    monkeypatch.setattr(leadership_automatic, "source_is_gone", judging)
    await one.start()
    await two.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await call("POST", f"{one.url}/pause", expect=200)
    ttl = one.config.service.lease.ttl_seconds

    async def judged_silent_pause() -> bool:
        # Zone 2's watcher has judged zone 1's paused lease, unchanged for longer than a live
        # one may be, and one more round has passed since (so that judgement was acted on).
        assert not any(gone for _, gone in judged), "zone 2 took a paused zone for gone"
        silent = [
            n
            for n, (seen, _) in enumerate(judged)
            if seen.record is not None
            and seen.record.state is LeaseState.PAUSED
            and seen.seconds_unchanged >= ttl
        ]
        return bool(silent) and len(judged) > silent[0] + 1

    await wait_for(judged_silent_pause, "zone 2 to judge zone 1's paused lease past its TTL")
    status = await status_of(two.url)
    assert status["state"] == "STANDBY"
    assert status["operation"] is None
