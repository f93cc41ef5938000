"""Errors of the durable state layer, kept apart from the driver errors they sit on top of.

::

    StateError
     +-- LeaseHeld        take_over() refused: another holder's lease is live (not released)
     +-- LeaseCorrupted   lease.json exists but cannot be parsed; an operator must look
     +-- NotLeader        a log append was attempted while this agent's lease is not held
     +-- Fenced           a higher (term, epoch) owns the log; this writer is done for good
     +-- LogCorrupted     the log breaks its own invariants (unreadable entry, gap, order)
     |    +-- SplitBrain  another writer with an equal or lower (term, epoch) wrote where we write
     +-- CheckpointInvalid  a checkpoint is truncated, corrupt or foreign; loading skips it
     +-- PrimaryTaken     a claim of the primary record lost: another zone (or operation) holds it
     +-- PrimaryCorrupted primary/<group>.json exists but cannot be parsed; an operator must look

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
    """A newer (term, epoch) has written to the log: every later append of this writer is
    refused. ``term``/``newer_term`` are 0 for logs and writers from before terms existed."""

    def __init__(
        self,
        zone: str,
        epoch: int,
        seq: int,
        newer_epoch: int,
        by: str,
        *,
        term: int = 0,
        newer_term: int = 0,
    ) -> None:
        super().__init__(
            f"writer of zone {zone!r} with term {term}, epoch {epoch} is fenced: entry {seq} has "
            f"term {newer_term}, epoch {newer_epoch} (written by {by!r})"
        )
        self.zone = zone
        self.epoch = epoch
        self.seq = seq
        self.newer_epoch = newer_epoch
        self.by = by
        self.term = term
        self.newer_term = newer_term


class LogCorrupted(StateError):
    """The commit log is not what its invariants promise; never overwrite, report."""


class SplitBrain(LogCorrupted):
    """Two writers believe they own the same epoch range: a bug, or a duplicated holder id."""


class CheckpointInvalid(StateError):
    """A checkpoint that is not complete and intact; the loader falls back to an older one."""


class PrimaryTaken(StateError):
    """A claim of the primary record did not commit: the record names ``zone`` at ``term``.

    Raised when the record names a zone that is neither the claim's source nor its target, when
    the compare-and-swap (or create) lost a race (``zone``/``term`` are then the winner's, read
    back after the loss), and when the record already names the target zone under another
    operation (``zone`` is then the claimant's own zone: it is primary already).
    """

    def __init__(self, group: str, zone: str, term: int, operation_id: str | None) -> None:
        held = f"term {term}, operation {operation_id}" if operation_id else f"term {term}"
        super().__init__(f"primary of failover group {group!r} is held by zone {zone!r} ({held})")
        self.group = group
        self.zone = zone
        self.term = term
        self.operation_id = operation_id


class PrimaryCorrupted(StateError):
    """``primary/<group>.json`` is not a primary record; nobody may claim until it is fixed."""
