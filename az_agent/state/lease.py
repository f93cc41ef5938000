"""The leader lease of a zone: who may write its backups, and the epoch that fences the rest.

Kubernetes-style leader election on one object, ``<zone>/lease.json``:

* acquire with a create-only write when the object is absent, renew with compare-and-swap on
  its version token (same epoch, fresh nonce), take over with compare-and-swap and a higher
  epoch when the record is ``released``, or when its version has stayed unchanged for the
  record's ``ttlSeconds`` *on the observer's own monotonic clock*. Wall clocks are never
  compared across machines.
* the holder counts itself leader only while ``monotonic() - start of its last successful
  renewal < renewDeadline``. Since ``renewDeadline < ttl`` and an observer starts counting no
  earlier than the renewal landed, the holder stops before anyone can take over, and a storage
  outage shorter than the deadline costs nothing.
* the epoch only grows and stays above every epoch in the zone's log, so a lost ``lease.json``
  never hands out an epoch that an older writer already used.

A ``paused`` lease (clean ``/pause``) is never taken by the election loop, only by an explicit
:meth:`LeaseKeeper.take_over`: the handover is an operator's (or the standby's) decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from az_agent.drivers.errors import DriverError, NotFound, PreconditionFailed
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state.clock import Clock, SystemClock
from az_agent.state.concurrent import beside
from az_agent.state.entries import LogEntry
from az_agent.state.errors import LeaseHeld, LogCorrupted, StateError
from az_agent.state.keys import check_zone, lease_key
from az_agent.state.lease_record import (
    LeaseObservation,
    LeaseRecord,
    LeaseSettings,
    LeaseState,
    LeaseStatus,
)
from az_agent.state.log import last_entry

log = logging.getLogger(__name__)

_MAX_PENDING = 16
FORCED_TAKE_OVER_ATTEMPTS = 5
"""A forced take-over re-reads and swaps again when the live holder's renewal won in between."""


def new_holder_id(name: str) -> str:
    """A holder id unique to this process incarnation: a restart must not inherit a lease
    (and its epoch) that a stalled previous incarnation may still be writing under."""
    return f"{name}-{uuid.uuid4().hex[:12]}"


class LeaseKeeper:
    """Acquires, renews, takes over and releases one zone's lease (see module docstring).

    Usable for the agent's own zone (:meth:`run` keeps it) and for a source zone during
    activation (:meth:`take_over`, then a fence entry in that zone's log). Methods are
    serialised by a lock; storage errors propagate from the one-shot methods and are logged by
    :meth:`run`.
    """

    def __init__(
        self,
        store: ObjectStore,
        zone: str,
        holder_id: str,
        settings: LeaseSettings | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._zone = check_zone(zone)
        self._key = lease_key(zone)
        self._holder_id = holder_id
        self._settings = settings or LeaseSettings()
        self._clock = clock or SystemClock()
        self._lock = asyncio.Lock()
        self._record: LeaseRecord | None = None  # last record read or written
        self._seen: tuple[str | None, float] | None = None  # version, first seen (monotonic)
        self._mine: LeaseRecord | None = None  # our last confirmed record while we hold it
        self._my_version: str | None = None
        self._renewed_at: float | None = None  # start of our last confirmed write
        self._epoch: int | None = None
        self._pending: dict[str, tuple[float, int]] = {}  # nonce -> (start, abdications)
        self._abdications = 0  # a write sent before the last abdication makes no leader
        self._last_write: float | None = None
        self._published = False
        self._up, self._down = asyncio.Event(), asyncio.Event()
        self._down.set()
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def zone(self) -> str:
        return self._zone

    @property
    def holder_id(self) -> str:
        return self._holder_id

    @property
    def settings(self) -> LeaseSettings:
        return self._settings

    @property
    def epoch(self) -> int | None:
        """The epoch held now or last held by this keeper; None if never held."""
        return self._epoch

    @property
    def is_leader(self) -> bool:
        """True only while the last renewal started less than the renew deadline ago."""
        return (
            self._renewed_at is not None
            and self._mine is not None
            and self._mine.state is LeaseState.ACTIVE
            and self._clock.monotonic() - self._renewed_at < self._settings.renew_deadline_seconds
        )

    def add_listener(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(is_leader)`` on every change of leadership (from the loop)."""
        self._listeners.append(callback)

    async def wait_leader(self) -> None:
        await self._up.wait()

    async def wait_not_leader(self) -> None:
        await self._down.wait()

    def status(self) -> LeaseStatus:
        now = self._clock.monotonic()
        record = self._record
        return LeaseStatus(
            zone=self._zone,
            holder_id=self._holder_id,
            is_leader=self.is_leader,
            epoch=self._epoch,
            seconds_since_renewal=None if self._renewed_at is None else now - self._renewed_at,
            record_holder=record.holder if record else None,
            record_epoch=record.epoch if record else None,
            record_state=record.state if record else None,
            seconds_unchanged=None if self._seen is None else now - self._seen[1],
            acquired_at=record.acquired_at if record else None,
            renewed_at=record.renewed_at if record else None,
        )

    async def observe(self) -> LeaseObservation:
        """Read the lease without writing; tracks how long its version stays unchanged."""
        async with self._lock:
            return await self._observe()

    async def tick(self) -> bool:
        """One election round: renew ours, or acquire an absent, released or expired lease.

        Returns whether this agent is leader afterwards. Storage errors propagate.
        """
        async with self._lock:
            try:
                if self._holds() and await self._renew():
                    return self.is_leader
                observation = await self._observe()
                if self._holds():
                    return self.is_leader  # our own write whose response was lost
                record = observation.record
                if record is None or record.state is LeaseState.RELEASED or observation.is_expired:
                    await self._acquire(observation, await last_entry(self._store, self._zone))
                return self.is_leader
            finally:
                self._publish()

    async def take_over(self, *, force: bool = False, tail_hint: int | None = None) -> int:
        """Take the lease now and return the new epoch (an operator action, or activation).

        Absent, released, paused or expired leases are taken at once. A live lease of another
        holder raises ``LeaseHeld`` unless ``force``: forcing is for a holder known to be dead
        or paused by other means (its writes are then fenced through the log). ``tail_hint``:
        an entry of the zone's log the caller has read, where the search for the newest entry
        (whose epoch the new one must exceed) starts if it is still there.
        """
        async with self._lock:
            try:
                if self._holds() and await self._renew():
                    return self._held_epoch()
                for attempt in range(1, FORCED_TAKE_OVER_ATTEMPTS + 1):
                    observation, newest = await self._observe_with_tail(tail_hint)
                    if self._holds():
                        return self._held_epoch()
                    record = observation.record
                    if record is not None and observation.is_live:
                        if not force:
                            raise LeaseHeld(
                                self._zone,
                                record.holder,
                                record.epoch,
                                observation.seconds_unchanged,
                            )
                        log.warning(
                            "zone %s: forcing take-over of a live lease held by %s (epoch %d)",
                            self._zone,
                            record.holder,
                            record.epoch,
                        )
                    if await self._acquire(observation, newest):
                        return self._held_epoch()
                    # Lost the swap. Unforced, to whoever won; forced, most likely to the live
                    # holder's own renewal in between: read again and swap against that.
                    if not force or attempt == FORCED_TAKE_OVER_ATTEMPTS:
                        raced = self._record
                        raise LeaseHeld(
                            self._zone,
                            raced.holder if raced else "<nobody>",
                            raced.epoch if raced else 0,
                            0.0,
                        )
                raise AssertionError("unreachable")  # pragma: no cover
            finally:
                self._publish()

    def abdicate(self) -> None:
        """Stop counting as leader at once, writing nothing.

        For a holder that learned it was fenced (a newer term or epoch): it must not write, so
        it cannot release; the record stays as it is and others judge its expiry as usual.
        A later :meth:`tick` or :meth:`take_over` may lead again.
        """
        self._renewed_at = None
        self._abdications += 1  # a renewal already on its way must not make us leader again
        self._publish()

    async def release(self, state: LeaseState = LeaseState.RELEASED) -> bool:
        """Give the lease up (``released``, or ``paused`` for a handover), keeping the epoch.

        Leadership ends before the write, since the other side may act as soon as it lands.
        Returns False only when the lease is not ours to release (never held, already given
        up, or another holder's write won). A storage error propagates: the write's outcome is
        unknown, the caller must not report it as "no longer ours"; the lease is then still
        ours in the bucket (the next round renews it) or released (the next read settles it).
        """
        if state is LeaseState.ACTIVE:
            raise ValueError("release to a non-active state")
        async with self._lock:
            mine, version = self._mine, self._my_version
            if mine is None or mine.state is not LeaseState.ACTIVE:
                return False
            self._renewed_at = None
            self._publish()
            try:
                done = await self._write(mine.epoch, version, mine.acquired_at, state)
            except DriverError as exc:
                log.warning("zone %s: could not release the lease: %s", self._zone, exc)
                raise
            if done:
                log.info(
                    "zone %s: lease %s by %s (epoch %d)",
                    self._zone,
                    state,
                    self._holder_id,
                    mine.epoch,
                )
            return done

    async def run(
        self, *, wants: Callable[[], bool] = lambda: True, release_on_exit: bool = True
    ) -> None:
        """Keep acquiring and renewing every retry period until cancelled.

        ``wants`` is asked before each round: while it is False no round is played (a leader
        then stops renewing and loses the lease at its renew deadline, as if it had hung).

        Leadership changes are published through :meth:`add_listener`, :meth:`wait_leader` and
        :meth:`wait_not_leader`, including the self-fencing at the renew deadline while a
        storage call hangs. On exit the lease is released (shielded from cancellation).
        """
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._campaign(wants), name=f"lease-{self._zone}-campaign")
                group.create_task(self._watch(), name=f"lease-{self._zone}-watch")
        finally:
            if release_on_exit and self._holds():
                with contextlib.suppress(DriverError):  # logged; the TTL frees it instead
                    await asyncio.shield(self.release())
            self._publish()

    async def _campaign(self, wants: Callable[[], bool]) -> None:
        while True:
            try:
                if wants():
                    await self.tick()
            except LogCorrupted:
                raise  # no later round reads it better: the owner decides (the agent FAILS)
            except (DriverError, StateError) as exc:
                log.warning("zone %s: lease round failed: %s", self._zone, exc)
            await self._clock.sleep(self._settings.retry_period_seconds)

    async def _watch(self) -> None:
        while True:
            self._publish()
            pause = self._settings.retry_period_seconds
            if self.is_leader and self._renewed_at is not None:
                left = self._renewed_at + self._settings.renew_deadline_seconds
                pause = min(pause, max(left - self._clock.monotonic(), 0.0) + 1e-3)
            await self._clock.sleep(pause)

    def _publish(self) -> None:
        leader = self.is_leader
        if leader == self._published:
            return
        self._published = leader
        (self._up if leader else self._down).set()
        (self._down if leader else self._up).clear()
        log.info(
            "zone %s: %s %s leader (epoch %s)",
            self._zone,
            self._holder_id,
            "is now" if leader else "is no longer",
            self._epoch,
        )
        for callback in self._listeners:
            callback(leader)

    def _held_epoch(self) -> int:
        assert self._mine is not None
        return self._mine.epoch

    def _holds(self) -> bool:
        return self._mine is not None and self._mine.state is LeaseState.ACTIVE

    async def _observe(self) -> LeaseObservation:
        try:
            data, info = await self._store.get(self._key)
        except NotFound:
            record, version = None, None
        else:
            record, version = LeaseRecord.decode(data, self._key), info.version
        now = self._clock.monotonic()  # after the read: an observer may only count from here
        if self._seen is None or self._seen[0] != version:
            self._seen = (version, now)
        self._record = record
        self._settle(record, version)
        return LeaseObservation(record, version, now - self._seen[1])

    def _settle(self, record: LeaseRecord | None, version: str | None) -> None:
        """Reconcile what we believe with what the bucket says."""
        if record is not None and record.holder == self._holder_id:
            sent = self._pending.pop(record.nonce, None)
            if sent is not None:
                self._pending.clear()
                self._confirm(record, version, *sent)
                return
        if self._mine is None or version == self._my_version:
            return
        holder = f"{record.holder} (epoch {record.epoch}, {record.state})" if record else "nobody"
        log.warning("zone %s: lost the lease, now held by %s", self._zone, holder)
        self._mine, self._my_version, self._renewed_at = None, None, None

    def _confirm(
        self, record: LeaseRecord, version: str | None, start: float, abdications: int
    ) -> None:
        """Our write ``record`` is stored; it counts for leadership unless an abdication came
        after it was sent (the holder was fenced meanwhile: it holds the record, not the lead)."""
        same_term = self._mine is not None and self._mine.epoch == record.epoch
        self._mine, self._my_version, self._epoch = record, version, record.epoch
        if record.state is not LeaseState.ACTIVE or abdications != self._abdications:
            self._renewed_at = None
        elif same_term and self._renewed_at is not None:
            self._renewed_at = max(self._renewed_at, start)
        else:
            self._renewed_at = start

    async def _renew(self) -> bool:
        assert self._mine is not None
        return await self._write(
            self._mine.epoch, self._my_version, self._mine.acquired_at, LeaseState.ACTIVE
        )

    async def _observe_with_tail(
        self, tail_hint: int | None
    ) -> tuple[LeaseObservation, LogEntry | None]:
        """The lease and the log's newest entry, read together (a take-over needs both; one
        round trip, not two). Reading the log first is as safe: an entry written after it was
        read bears an epoch no higher than the lease's, read after, or the lease changed and
        the swap fails."""
        return await beside(self._observe(), last_entry(self._store, self._zone, hint=tail_hint))

    async def _acquire(self, observation: LeaseObservation, newest: LogEntry | None) -> bool:
        """Swap in a lease of an epoch above the observed one's and the log's ``newest``."""
        record = observation.record
        epoch = max(record.epoch if record else 0, newest.epoch if newest else 0) + 1
        won = await self._write(epoch, observation.version, self._clock.now(), LeaseState.ACTIVE)
        if won:
            previous = f"from {record.holder} ({record.state})" if record else "(was absent)"
            log.info(
                "zone %s: %s took the lease %s, epoch %d",
                self._zone,
                self._holder_id,
                previous,
                epoch,
            )
        return won

    async def _write(
        self, epoch: int, if_match: str | None, acquired_at: datetime, state: LeaseState
    ) -> bool:
        """Create (``if_match`` None) or CAS the record; True when our write is the one stored."""
        await self._pace()
        nonce = uuid.uuid4().hex
        record = LeaseRecord(
            holder=self._holder_id,
            zone=self._zone,
            epoch=epoch,
            ttl_seconds=self._settings.ttl_seconds,
            renew_deadline_seconds=self._settings.renew_deadline_seconds,
            state=state,
            acquired_at=acquired_at,
            renewed_at=self._clock.now(),
            nonce=nonce,
        )
        start = self._last_write = self._clock.monotonic()
        sent = self._pending[nonce] = (start, self._abdications)
        while len(self._pending) > _MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        try:
            info = await self._store.put(
                self._key, record.encode(), if_none_match=if_match is None, if_match=if_match
            )
        except PreconditionFailed:
            observation = await self._observe()  # settles a lost response of our own
            return observation.record is not None and observation.record.nonce == nonce
        self._pending.clear()
        self._record, self._seen = record, (info.version, self._clock.monotonic())
        self._confirm(record, info.version, *sent)
        return True

    async def _pace(self) -> None:
        """Two writes of the lease no closer than the store allows (GCS: one a second)."""
        if self._last_write is None:
            return
        wait = self._last_write + self._store.write_spacing - self._clock.monotonic()
        if wait > 0:
            await self._clock.sleep(wait)
