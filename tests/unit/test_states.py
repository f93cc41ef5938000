"""The failover state machine, checked exhaustively: every pair is either listed or refused."""

from __future__ import annotations

import itertools

import pytest

from az_agent.agent.operations.states import (
    TRANSITIONS,
    AgentState,
    IllegalTransition,
    Request,
    allowed_requests,
    transition,
)


def test_handshake_path() -> None:
    state = AgentState.ACTIVE
    state = transition(state, Request.PAUSE)
    assert state is AgentState.PAUSING
    assert transition(state, Request.FINISH) is AgentState.PAUSED
    standby = transition(AgentState.STANDBY, Request.ACTIVATE)
    assert standby is AgentState.ACTIVATING
    assert transition(standby, Request.FINISH) is AgentState.ACTIVE
    assert transition(AgentState.ACTIVE, Request.RESUME) is AgentState.ACTIVE


@pytest.mark.parametrize(("state", "request_"), list(itertools.product(AgentState, Request)))
def test_every_pair_is_decided(state: AgentState, request_: Request) -> None:
    if (state, request_) in TRANSITIONS:
        assert transition(state, request_) is TRANSITIONS[(state, request_)]
        assert request_ in allowed_requests(state)
    else:
        with pytest.raises(IllegalTransition) as caught:
            transition(state, request_)
        assert caught.value.state is state
        assert state.value in str(caught.value)


def test_no_activation_while_active_or_busy() -> None:
    for state in (AgentState.ACTIVE, AgentState.ACTIVATING, AgentState.PAUSING):
        with pytest.raises(IllegalTransition):
            transition(state, Request.ACTIVATE)


def test_fenced_agent_never_resumes_writing_by_itself() -> None:
    assert Request.RESUME not in allowed_requests(AgentState.FENCED)
    assert Request.PAUSE not in allowed_requests(AgentState.FENCED)
    assert transition(AgentState.PAUSED, Request.FENCE) is AgentState.STANDBY
