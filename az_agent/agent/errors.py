"""What the agent's domain code raises when it refuses or fails a request.

Operations, requests and the daemon raise these and never choose an HTTP status: the HTTP layer
alone maps them (:func:`az_agent.agent.http.errors.http_status_of`). ``extra`` carries the
fields an operator needs to act (the current ``state``, the ``winner`` of a lost race, how many
seconds to wait), and ends up in the JSON body beside ``detail``::

    AgentError
     +-- InvalidParameter   a request parameter is unknown, missing or malformed
     +-- UnknownTarget      an unknown zone, or no backup at or before the requested time
     +-- WrongState         not allowed now: the current state, a live source, a lost race
     +-- NotReady           the agent cannot take requests yet (recovering, or shutting down)
     +-- OperationFailed    the operation ran and failed; it can be retried
"""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """Base: a human sentence and the structured facts behind it."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidParameter(AgentError):
    """``parameter`` names the culprit."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}", parameter=parameter)


class UnknownTarget(AgentError):
    """Nothing to act on: an unknown zone, or no backup at or before ``latestTime``."""


class WrongState(AgentError):
    """The request is not allowed now; ``state`` (in ``extra``) says why."""


class NotReady(AgentError):
    """The agent is alive but cannot take requests yet; ``retry_after`` is a hint in seconds."""

    def __init__(self, detail: str, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class OperationFailed(AgentError):
    """An operation ran and failed; ``extra`` holds it, and POSTing again retries it."""
