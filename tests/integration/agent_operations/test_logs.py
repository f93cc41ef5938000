"""The agent's log lines say who wrote them: its zone and holder id, and inside an operation its
id, whoever runs the agent (here ``Agent.run`` without the HTTP server, as tests and the chaos
tier do)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from az_agent.agent.observability.logs import json_handler
from az_agent.agent.operations.requests import PauseRequest
from tests.integration.agent_operations.conftest import ZONE, Rig, until

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def json_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Lines]:
    """The JSON lines logged at INFO and above so far, as ``az-agent run`` writes them."""
    stream = io.StringIO()
    handler = json_handler(stream)
    caplog.set_level(logging.INFO)
    logging.getLogger().addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logging.getLogger().removeHandler(handler)


async def test_every_line_names_the_zone_the_holder_and_the_operation(
    rig: Rig, json_logs: Lines
) -> None:
    async with rig.running() as agent:
        await until(lambda: agent.session is not None, "the agent to lead")
        status, body = await agent.pause(PauseRequest())
        assert status == 200
    pause = body["operation"]["id"]
    lines = [line for line in json_logs() if line["logger"].startswith("az_agent.agent.")]
    assert lines
    for line in lines:
        assert (line.get("zone"), line.get("holder")) == (ZONE, agent.holder), line
    paused = [line for line in lines if line["logger"] == "az_agent.agent.operations.pause"]
    assert paused
    assert {line.get("operation") for line in paused} == {pause}
