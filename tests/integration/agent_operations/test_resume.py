"""``/resume`` of a paused zone in place: never by force, never over another zone's activation."""

from __future__ import annotations

import asyncio

import pytest

from az_agent.agent.daemon import Agent
from az_agent.agent.errors import WrongState
from az_agent.agent.operations.requests import PauseRequest
from az_agent.agent.operations.states import AgentState
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import (
    FencePayload,
    LeaseKeeper,
    LeaseSettings,
    LeaseState,
    LogWriter,
    PrimaryLock,
)
from az_agent.state.keys import lease_key
from tests.integration.agent_operations.conftest import (
    LEASE,
    ZONE,
    Rig,
    lease_record,
    log_entries,
    until,
)

SETTINGS = LeaseSettings.model_validate(LEASE)
OTHER_ZONE_AGENT = "az2-agent-0123456789ab"


async def paused(rig: Rig, agent: Agent) -> None:
    await until(lambda: agent.keeper.is_leader and agent.session is not None, "leading")
    status, body = await agent.pause(PauseRequest())
    assert (status, body["state"]) == (200, "PAUSED"), body


async def activate_from_zone_one(store: ObjectStore) -> None:
    """What zone 2's activation does to zone 1: claim the primary, fence its log under the new
    term, and leave its lease paused under zone 2's name."""
    record = await PrimaryLock(store).claim(
        source=ZONE, zone="az2", operation_id="activate-by-the-test"
    )
    keeper = LeaseKeeper(store, ZONE, OTHER_ZONE_AGENT, SETTINGS)
    epoch = await keeper.take_over()
    writer = LogWriter(store, ZONE, epoch, OTHER_ZONE_AGENT, term=record.term)
    await writer.write_fence(reason="activated by zone az2")
    assert await keeper.release(LeaseState.PAUSED)


async def test_resume_refuses_a_lease_another_agent_holds_live(rig: Rig) -> None:
    async with rig.running() as agent:
        await paused(rig, agent)
        replica = LeaseKeeper(rig.store.inner, ZONE, "az1-agent-replica000", SETTINGS)
        await replica.take_over()  # another replica of this zone resumed it first

        with pytest.raises(WrongState) as refused:
            await agent.resume()
        assert "az1-agent-replica000" in refused.value.detail
        assert refused.value.extra["holder"] == "az1-agent-replica000"
        assert agent.state is AgentState.PAUSED
        record = await lease_record(rig.store)
        assert (record.holder, record.state) == ("az1-agent-replica000", LeaseState.ACTIVE)
        assert not agent.keeper.is_leader


async def test_resume_gives_the_lease_back_when_taken_over_meanwhile(rig: Rig) -> None:
    """Zone 2 activates from zone 1 between /resume's first look at the log and its taking
    of the lease: the lease goes back paused, nothing is written to the log, 409."""
    async with rig.running() as agent:
        await paused(rig, agent)
        request = asyncio.current_task()
        activated = asyncio.Event()

        async def activate_meanwhile(op: str, key: str) -> None:
            # The resume's own read of the lease (this task), not the agent's watch loop.
            mine = asyncio.current_task() is request
            if op == "get" and key == lease_key(ZONE) and mine and not activated.is_set():
                activated.set()
                await activate_from_zone_one(rig.store.inner)

        rig.store.before = activate_meanwhile
        with pytest.raises(WrongState) as refused:
            await agent.resume()
        rig.store.before = Rig.no_hook
        assert activated.is_set()
        assert OTHER_ZONE_AGENT in refused.value.detail, refused.value.detail
        assert agent.state is AgentState.STANDBY, "handed over: the other zone activated"
        assert not agent.keeper.is_leader

        newest = (await log_entries(rig.store))[-1]
        assert isinstance(newest.payload, FencePayload)
        assert newest.payload.by == OTHER_ZONE_AGENT, "nothing written after the fence"
        assert (await lease_record(rig.store)).state is LeaseState.PAUSED
        reads = rig.store.keys.count
        seen = reads(("get", lease_key(ZONE)))
        await until(lambda: reads(("get", lease_key(ZONE))) >= seen + 2, "two lease rounds")
        assert (await log_entries(rig.store))[-1] == newest, "and nothing later either"
