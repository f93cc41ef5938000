"""``/metrics`` says what ``/status`` says about the group's primary record, from the moment a
session starts (it reads the record too), not only after the next watch round."""

from __future__ import annotations

from az_agent.agent.daemon import Agent
from tests.integration.agent_operations.conftest import ZONE, Rig, until


def gauge(agent: Agent, name: str) -> float | None:
    return agent.deps.metrics.registry.get_sample_value(name)


async def test_a_new_session_exports_the_record_it_read(rig: Rig) -> None:
    async with rig.running() as agent:
        # An empty bucket: the watch's first round finds no record, the session creates it.
        await until(lambda: agent.session is not None, "leading")
        primary = agent.leadership.primary
        assert primary is not None
        assert (primary.zone, primary.term) == (ZONE, 1)
        assert gauge(agent, "az_agent_primary_term") == 1
        assert gauge(agent, "az_agent_primary") == 1
