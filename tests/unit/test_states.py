"""The failover state machine against an independent statement of what it must do.

``EXPECTED`` is written out by hand from the diagram in ``operations/states.py`` and the
"Failover state machine" section of DESIGN.md; it does not read ``TRANSITIONS``, so a change of
the table that is not also a change of intent fails here. The properties below are checked by
walking :func:`transition` itself.
"""

from __future__ import annotations

import itertools
from collections import deque
from pathlib import Path

import pytest

from az_agent.agent.operations.states import (
    OPERATOR_ANSWERS,
    OPERATOR_REQUESTS,
    REFUSED,
    AgentState,
    IllegalTransition,
    Request,
    allowed_requests,
    answers_table,
    holds,
    transition,
)

# Rows: the current state; columns: the request; cells: the next state, or "-" when refused.
EXPECTED_TABLE = """
              pause     activate    resume   finish   fail     fence
  STANDBY     -         ACTIVATING  -        -        -        FENCED
  ACTIVE      PAUSING   -           ACTIVE   -        -        FENCED
  PAUSING     -         -           -        PAUSED   FAILED   FENCED
  PAUSED      -         ACTIVATING  ACTIVE   -        -        STANDBY
  ACTIVATING  -         -           -        ACTIVE   FAILED   -
  FAILED      PAUSING   ACTIVATING  ACTIVE   -        -        FENCED
  FENCED      -         ACTIVATING  -        -        -        FENCED
"""
OPERATOR = (Request.PAUSE, Request.ACTIVATE, Request.RESUME)
BUSY = (AgentState.PAUSING, AgentState.ACTIVATING)


def _expected() -> dict[tuple[AgentState, Request], AgentState | None]:
    header, *rows = [line.split() for line in EXPECTED_TABLE.strip().splitlines()]
    requests = [Request(name) for name in header]
    matrix: dict[tuple[AgentState, Request], AgentState | None] = {}
    for state_name, *cells in rows:
        assert len(cells) == len(requests), state_name
        for request, cell in zip(requests, cells, strict=True):
            matrix[(AgentState(state_name), request)] = None if cell == "-" else AgentState(cell)
    return matrix


EXPECTED = _expected()
PAIRS = list(itertools.product(AgentState, Request))


def _edges(*, without: tuple[Request, ...] = ()) -> dict[AgentState, set[AgentState]]:
    """The graph :func:`transition` draws, leaving out the requests in ``without``."""
    graph: dict[AgentState, set[AgentState]] = {state: set() for state in AgentState}
    for state, request in PAIRS:
        target = None if request in without else _accepts(state, request)
        if target is not None:
            graph[state].add(target)
    return graph


def _reachable(graph: dict[AgentState, set[AgentState]], start: AgentState) -> set[AgentState]:
    seen, queue = {start}, deque([start])
    while queue:
        for nxt in graph[queue.popleft()] - seen:
            seen.add(nxt)
            queue.append(nxt)
    return seen


def test_the_expected_table_names_every_state_and_request() -> None:
    assert set(EXPECTED) == set(PAIRS)


def test_handshake_path() -> None:
    state = AgentState.ACTIVE
    state = transition(state, Request.PAUSE)
    assert state is AgentState.PAUSING
    assert transition(state, Request.FINISH) is AgentState.PAUSED
    standby = transition(AgentState.STANDBY, Request.ACTIVATE)
    assert standby is AgentState.ACTIVATING
    assert transition(standby, Request.FINISH) is AgentState.ACTIVE
    assert transition(AgentState.ACTIVE, Request.RESUME) is AgentState.ACTIVE


@pytest.mark.parametrize(("state", "request_"), PAIRS)
def test_every_pair_is_decided_as_intended(state: AgentState, request_: Request) -> None:
    expected = EXPECTED[(state, request_)]
    if expected is not None:
        assert transition(state, request_) is expected
        assert request_ in allowed_requests(state)
        return
    assert request_ not in allowed_requests(state)
    with pytest.raises(IllegalTransition) as caught:
        transition(state, request_)
    assert (caught.value.state, caught.value.request) == (state, request_)
    assert caught.value.extra["state"] == state.value  # what the 409 body shows
    assert str(caught.value) == f"cannot {request_.value} while {state.value}"


@pytest.mark.parametrize("state", list(AgentState))
def test_allowed_requests_are_exactly_the_accepted_ones(state: AgentState) -> None:
    accepted = [r for r in Request if EXPECTED[(state, r)] is not None]
    assert sorted(allowed_requests(state)) == sorted(accepted)
    assert len(allowed_requests(state)) == len(set(allowed_requests(state)))


def test_no_activation_while_active_or_busy() -> None:
    for state in (AgentState.ACTIVE, *BUSY):
        with pytest.raises(IllegalTransition):
            transition(state, Request.ACTIVATE)


def test_a_fenced_agent_writes_again_only_through_an_activation() -> None:
    without_activate = _edges(without=(Request.ACTIVATE,))
    assert _reachable(without_activate, AgentState.FENCED) == {AgentState.FENCED}
    assert AgentState.ACTIVE in _reachable(_edges(), AgentState.FENCED)
    assert transition(AgentState.PAUSED, Request.FENCE) is AgentState.STANDBY  # handed over


def test_active_is_entered_only_by_a_finished_activation_or_a_resume() -> None:
    entries = {
        (state, request)
        for state, request in PAIRS
        if state is not AgentState.ACTIVE and _accepts(state, request) is AgentState.ACTIVE
    }
    assert entries == {
        (AgentState.ACTIVATING, Request.FINISH),
        (AgentState.PAUSED, Request.RESUME),
        (AgentState.FAILED, Request.RESUME),  # a failed pause undone
    }


def test_only_a_running_operation_finishes_or_fails_and_it_takes_no_operator_request() -> None:
    for state, request in PAIRS:
        accepted = _accepts(state, request) is not None
        if request in (Request.FINISH, Request.FAIL):
            assert accepted == (state in BUSY), (state, request)
        elif state in BUSY and request in OPERATOR:
            assert not accepted, (state, request)


def test_every_state_is_reachable_from_where_an_agent_starts() -> None:
    graph = _edges()
    for start in (AgentState.STANDBY, AgentState.ACTIVE, AgentState.PAUSED):
        assert _reachable(graph, start) == set(AgentState), start


def _accepts(state: AgentState, request: Request) -> AgentState | None:
    try:
        return transition(state, request)
    except IllegalTransition:
        return None


def test_the_readme_shows_every_states_answer_to_every_post() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert answers_table() in readme, "README's table differs from states.answers_table()"


@pytest.mark.parametrize("state", list(AgentState))
def test_the_documented_answers_are_the_accepted_requests(state: AgentState) -> None:
    """A non-409 cell exactly where :func:`transition` accepts the request or it already
    holds; no request both holds and moves the state."""
    for request in OPERATOR_REQUESTS:
        accepted = _accepts(state, request) is not None
        assert not (accepted and holds(state, request)), (state, request)
        documented = (state, request) in OPERATOR_ANSWERS
        assert documented == (accepted or holds(state, request)), (state, request)
        cell = OPERATOR_ANSWERS.get((state, request), REFUSED)
        assert cell.startswith("409") != documented, (state, request, cell)


def test_a_pause_already_holds_only_when_paused() -> None:
    assert {s for s in AgentState if holds(s, Request.PAUSE)} == {AgentState.PAUSED}
