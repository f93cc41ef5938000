"""Errors of the durable state layer, kept apart from the driver errors they sit on top of.

::

    StateError
     +-- LeaseHeld        take_over() refused: another holder's lease is live (not released)
     +-- LeaseCorrupted   lease.json exists but cannot be parsed; an operator must look
     +-- NotLeader        a log append was attempted while this agent's lease is not held
     +-- Fenced           a higher epoch owns the log; this writer is done for good
     +-- LogCorrupted     the log breaks its own invariants (unreadable entry, gap, order)
     |    +-- SplitBrain  another writer with an equal or lower epoch wrote where we write
     +-- CheckpointInvalid  a checkpoint is truncated, corrupt or foreign; loading skips it

Storage failures underneath (``Unavailable``, ``PermissionDenied``, ...) are passed through as
the driver raised them: they are not state errors, and retrying them is the caller's business.
"""

from __future__ import annotations


class StateError(Exception):
    """Base of every error raised by :mod:`az_agent.state`."""


class LeaseHeld(StateError):
    """A live lease belongs to someone else; taking it needs ``force=True``."""

    def __init__(self, zone: str, holder: str, epoch: int, seconds_unchanged: float) -> None:
        super().__init__(
            f"lease of zone {zone!r} is live: held by {holder!r} (epoch {epoch}), "
            f"last changed {seconds_unchanged:.1f}s ago as seen from here; "
            "take it over only with force"
        )
        self.zone = zone
        self.holder = holder
        self.epoch = epoch
        self.seconds_unchanged = seconds_unchanged


class LeaseCorrupted(StateError):
    """``lease.json`` is not a lease record; nothing is decided until an operator fixes it."""


class NotLeader(StateError):
    """The writer's guard says this agent no longer holds the lease for the writer's epoch."""


class Fenced(StateError):
    """A newer epoch has written to the log: every later append of this writer is refused."""

    def __init__(self, zone: str, epoch: int, seq: int, newer_epoch: int, by: str) -> None:
        super().__init__(
            f"writer of zone {zone!r} with epoch {epoch} is fenced: entry {seq} has epoch "
            f"{newer_epoch} (written by {by!r})"
        )
        self.zone = zone
        self.epoch = epoch
        self.seq = seq
        self.newer_epoch = newer_epoch
        self.by = by


class LogCorrupted(StateError):
    """The commit log is not what its invariants promise; never overwrite, report."""


class SplitBrain(LogCorrupted):
    """Two writers believe they own the same epoch range: a bug, or a duplicated holder id."""


class CheckpointInvalid(StateError):
    """A checkpoint that is not complete and intact; the loader falls back to an older one."""
