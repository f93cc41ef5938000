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


def transition(state: AgentState, request: Request) -> AgentState:
    """The state ``request`` leads to from ``state``; ``IllegalTransition`` when not allowed."""
    try:
        return TRANSITIONS[(state, request)]
    except KeyError:
        raise IllegalTransition(state, request) from None


def allowed_requests(state: AgentState) -> list[Request]:
    """What an operator may ask in ``state`` (shown in 409 answers and ``/status``)."""
    return [request for (source, request) in TRANSITIONS if source is state]
