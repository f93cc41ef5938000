"""The failover state machine: states, the requests that move between them, and nothing else.

Decisions are pure so they can be tested exhaustively; the operations that carry them out live
in their own modules and call :func:`transition` before doing anything.

::

    STANDBY --activate--> ACTIVATING --done--> ACTIVE --pause--> PAUSING --done--> PAUSED
       ^                      |                  |  ^                |                |
       |                      +--fail--> FAILED  |  +----resume------+----------------+
       +------------------------- fenced --------+        (resume in place, nobody took over)

    PAUSING --fail--> FAILED --pause--> PAUSING (retry)    FAILED --resume--> ACTIVE (undo)

``FENCED`` is where an agent lands when another agent took its zone with a higher epoch while
it was not paused: it stops writing and does not fight back; an operator's ``/activate`` (fail
back) or a restart leaves it. A ``PAUSED`` agent whose zone is taken was handed over, and
becomes ``STANDBY``. A pause that failed (or was cut short by a restart, which recovers to
``FAILED``) is retried with ``/pause`` or undone with ``/resume``: ingestion resumes, silences
are lifted. ``/resume`` from a failed *activation* is refused by the resume operation, which
knows the kind of the failed operation (this table does not).
"""

from __future__ import annotations

from enum import StrEnum

from az_agent.agent.errors import WrongState


class AgentState(StrEnum):
    STANDBY = "STANDBY"
    ACTIVE = "ACTIVE"
    PAUSING = "PAUSING"
    PAUSED = "PAUSED"
    ACTIVATING = "ACTIVATING"
    FAILED = "FAILED"
    FENCED = "FENCED"


class Request(StrEnum):
    PAUSE = "pause"
    ACTIVATE = "activate"
    RESUME = "resume"
    FINISH = "finish"  # the running operation completed
    FAIL = "fail"  # the running operation failed
    FENCE = "fence"  # another agent took this zone with a higher epoch


class IllegalTransition(WrongState):
    """A request that the current state does not allow; ``state`` names the current one."""

    def __init__(self, state: AgentState, request: Request) -> None:
        super().__init__(f"cannot {request.value} while {state.value}", state=state.value)
        self.state = state
        self.request = request


_S, _R = AgentState, Request
TRANSITIONS: dict[tuple[AgentState, Request], AgentState] = {
    (_S.STANDBY, _R.ACTIVATE): _S.ACTIVATING,
    (_S.FAILED, _R.ACTIVATE): _S.ACTIVATING,  # retry a failed activation
    (_S.PAUSED, _R.ACTIVATE): _S.ACTIVATING,  # fail back: a paused zone activates from the other
    (_S.FENCED, _R.ACTIVATE): _S.ACTIVATING,  # fail back after an unplanned failover
    (_S.ACTIVATING, _R.FINISH): _S.ACTIVE,
    (_S.ACTIVATING, _R.FAIL): _S.FAILED,
    (_S.ACTIVE, _R.PAUSE): _S.PAUSING,
    (_S.FAILED, _R.PAUSE): _S.PAUSING,  # a failed pause can be retried
    (_S.FAILED, _R.RESUME): _S.ACTIVE,  # ... or undone (resume ingestion, lift silences)
    (_S.PAUSING, _R.FINISH): _S.PAUSED,
    (_S.PAUSING, _R.FAIL): _S.FAILED,
    (_S.PAUSED, _R.RESUME): _S.ACTIVE,  # resume in place when nobody took over
    (_S.ACTIVE, _R.RESUME): _S.ACTIVE,  # lift silences after an activation
    (_S.STANDBY, _R.FENCE): _S.FENCED,
    (_S.ACTIVE, _R.FENCE): _S.FENCED,
    (_S.PAUSING, _R.FENCE): _S.FENCED,
    (_S.PAUSED, _R.FENCE): _S.STANDBY,  # handed over: the other zone activated from us
    (_S.FAILED, _R.FENCE): _S.FENCED,
    (_S.FENCED, _R.FENCE): _S.FENCED,
}


HOLDS: frozenset[tuple[AgentState, Request]] = frozenset({(_S.PAUSED, _R.PAUSE)})
"""Requests that already hold in a state: answered 200 with the current state, changing
nothing (a retried ``/pause`` after a lost answer must not read as a failure)."""

OPERATOR_REQUESTS = (_R.PAUSE, _R.ACTIVATE, _R.RESUME)
OPERATOR_ANSWERS: dict[tuple[AgentState, Request], str] = {
    (_S.ACTIVE, _R.PAUSE): "200 paused, 202 still running, 503 a step failed (`FAILED`)",
    (_S.FAILED, _R.PAUSE): "retries the pause: 200, 202 or 503 as from `ACTIVE`",
    (_S.PAUSED, _R.PAUSE): "200, already paused (nothing done)",
    (_S.STANDBY, _R.ACTIVATE): "202 with the operation (400, 404 or 409 when refused)",
    (_S.PAUSED, _R.ACTIVATE): "202: fail back from the zone that took over",
    (_S.FENCED, _R.ACTIVATE): "202: fail back after an unplanned failover",
    (_S.FAILED, _R.ACTIVATE): "202: retries a failed activation",
    (_S.ACTIVE, _R.RESUME): "200, lifts this agent's silences",
    (_S.PAUSED, _R.RESUME): "200, resumes in place (409 if another zone took over)",
    (_S.FAILED, _R.RESUME): "200 after a failed pause: ingestion resumed, `ACTIVE` "
    "(409 after a failed activation)",
}
"""What each state answers to each operator POST, when it is not a 409 (the README's table is
rendered from this by :func:`answers_table`; a test keeps both equal to ``TRANSITIONS``)."""
REFUSED = "409 with the state"


def holds(state: AgentState, request: Request) -> bool:
    """Whether ``request`` already holds in ``state`` (answer 200, do nothing)."""
    return (state, request) in HOLDS


def answers_table() -> str:
    """The Markdown table of :data:`OPERATOR_ANSWERS`, as the README shows it."""
    lines = [
        "| state | " + " | ".join(f"`POST /{r.value}`" for r in OPERATOR_REQUESTS) + " |",
        "|---|" + "---|" * len(OPERATOR_REQUESTS),
    ]
    for state in AgentState:
        cells = [OPERATOR_ANSWERS.get((state, r), REFUSED) for r in OPERATOR_REQUESTS]
        lines.append(f"| `{state.value}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def transition(state: AgentState, request: Request) -> AgentState:
    """The state ``request`` leads to from ``state``; ``IllegalTransition`` when not allowed."""
    try:
        return TRANSITIONS[(state, request)]
    except KeyError:
        raise IllegalTransition(state, request) from None


def allowed_requests(state: AgentState) -> list[Request]:
    """What an operator may ask in ``state`` (shown in 409 answers and ``/status``)."""
    return [request for (source, request) in TRANSITIONS if source is state]
