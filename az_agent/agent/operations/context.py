"""The narrow view of the agent that operations work through (no import of the daemon)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

from az_agent.agent.deps import AgentDeps
from az_agent.agent.leadership.session import LeaderSession
from az_agent.agent.operations.journal import Operation, OperationJournal
from az_agent.agent.operations.silences import SilenceRetry
from az_agent.agent.operations.states import AgentState, Request
from az_agent.state import Catalog, LeaseKeeper


class AgentContext(Protocol):
    """What pause, activate and resume may read and do."""

    zone: str
    holder: str
    deps: AgentDeps
    journal: OperationJournal
    operation: Operation | None
    admission: asyncio.Lock
    """Held while a request is admitted (validated and committed), one at a time."""
    silence_retry: SilenceRetry
    """The lock over ``silences.json`` and the retry of silences that could not be created."""

    @property
    def state(self) -> AgentState: ...

    @property
    def keeper(self) -> LeaseKeeper:
        """This zone's lease."""

    @property
    def session(self) -> LeaderSession | None:
        """The current leader session, while this agent leads its zone."""

    def set_state(self, request: Request) -> AgentState:
        """Apply ``request`` to the state machine (``IllegalTransition`` when not allowed)."""

    def start_operation(self, work: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``work`` as the one operation task, owned by the agent."""

    def source_keeper(self, zone: str) -> LeaseKeeper:
        """An observed keeper of another zone's lease."""

    def forget_source(self, zone: str) -> None: ...

    def followed_catalog(self, zone: str) -> Catalog | None:
        """A warm standby's catalog of ``zone`` as its follower last read it (None otherwise):
        refreshed, it spares an activation reading the whole log again."""

    async def stop_backups(self) -> None:
        """Stop the leader session's backup loops, keeping the session and its writer (for the
        pause's handover, which must be the term's last entry)."""

    async def stop_session(self) -> None:
        """End the leader session and keep it ended until the agent leads again."""
