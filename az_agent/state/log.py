"""The fenced commit log: what is listed here is part of the backup, and nothing else is.

Entries live at ``<zone>/log/<seq:020d>.json`` and are created with create-only writes at
consecutive sequence numbers starting at 1, so the log has no gaps and a name can be taken
once. Every entry carries its writer's epoch and term. A new leader writes a ``fence`` entry with
its higher epoch at the next free number; an older writer then loses the race for that name,
reads the entry, sees the higher epoch and stops for good. Data objects are written before their
entry: a fenced or crashed writer leaves orphans (swept later), never a half-recorded backup.

Fencing rule. Writers and entries are ordered by ``(term, epoch)``, term first: the epoch
(lease of one zone) fences the replicas of a zone, the term (primary record, pair-wide) fences a
whole zone after an activation of the other. A writer meeting an entry whose ``(term, epoch)``
is higher than its own is ``Fenced`` for good, whatever the epoch says when the term is higher;
an entry with a lower term but a higher epoch does not fence a writer of a higher term (a
replica that took the lease under a stale term is itself fenced by the newer term). Along one
zone's log ``(term, epoch)`` never decreases on legitimate paths, so judging the newest entry
judges every one before it; equal ``(term, epoch)`` from another writer is ``SplitBrain``.
Writers and logs from before terms existed have term 0 and keep the epoch-only behaviour.

The tail is found without listing the log: from a known entry (the newest checkpoint) probe
``+1, +2, +4, ...`` with ``head`` until a name is free, then bisect.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable

from az_agent.drivers.errors import NotFound, PreconditionFailed
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state.clock import Clock, SystemClock
from az_agent.state.entries import FencePayload, LogEntry, Payload
from az_agent.state.errors import Fenced, LogCorrupted, NotLeader, SplitBrain
from az_agent.state.keys import (
    CHECKPOINT_SUFFIX,
    check_zone,
    checkpoint_prefix,
    log_key,
    parse_seq,
)

log = logging.getLogger(__name__)

READ_WINDOW = 64
"""Entries fetched concurrently while replaying the log."""


async def entry_exists(store: ObjectStore, zone: str, seq: int) -> bool:
    try:
        await store.head(log_key(zone, seq))
    except NotFound:
        return False
    return True


async def read_entry(store: ObjectStore, zone: str, seq: int) -> LogEntry | None:
    """Entry ``seq``, or None when that name is free."""
    key = log_key(zone, seq)
    try:
        data, _ = await store.get(key)
    except NotFound:
        return None
    entry = LogEntry.decode(data, key)
    if entry.seq != seq:
        raise LogCorrupted(f"{key}: holds entry number {entry.seq}")
    return entry


async def checkpoint_seqs(store: ObjectStore, zone: str) -> list[int]:
    """Sequence numbers of the checkpoints present (valid or not), newest first."""
    prefix = checkpoint_prefix(zone)
    seqs = [
        seq
        async for info in store.list(prefix)
        if (seq := parse_seq(info.key, prefix, CHECKPOINT_SUFFIX)) is not None
    ]
    return sorted(seqs, reverse=True)


async def known_entry(store: ObjectStore, zone: str) -> int:
    """A sequence number known to exist (the newest checkpoint's), or 0.

    A checkpoint is only written for an entry that was read, so its number is a lower bound of
    the tail. The entry is checked anyway: a stray object in ``checkpoints/`` must not make the
    writer believe the log is longer than it is.
    """
    for seq in await checkpoint_seqs(store, zone):
        if seq >= 1 and await entry_exists(store, zone, seq):
            return seq
    return 0


async def find_tail(store: ObjectStore, zone: str, known: int | None = None) -> int:
    """The number of the last entry (0 for an empty log), in O(log n) ``head`` calls.

    ``known`` must exist (or be 0); by default the newest checkpoint's number is used. Entries
    appended concurrently may or may not be counted: the answer is a tail that existed.
    """
    low = await known_entry(store, zone) if known is None else known
    step, high = 1, None
    while high is None:
        probe = low + step
        if await entry_exists(store, zone, probe):
            low, step = probe, step * 2
        else:
            high = probe
    while high - low > 1:
        middle = (low + high) // 2
        if await entry_exists(store, zone, middle):
            low = middle
        else:
            high = middle
    return low


async def last_entry(store: ObjectStore, zone: str, *, hint: int | None = None) -> LogEntry | None:
    """The newest entry of the log, or None when the log is empty; ``hint`` as for
    :func:`newest_entry`."""
    return (await newest_entry(store, zone, hint=hint))[1]


async def newest_entry(
    store: ObjectStore, zone: str, *, hint: int | None = None
) -> tuple[int, LogEntry | None]:
    """The log's tail (0: empty) and its entry (None if it could not be read).

    ``hint``: an entry number the caller has read. Retention removes the oldest entries first,
    so from an entry still there the log is whole up to its tail: the search may start from
    it, instead of a checkpoint listing and a dozen HEADs. The hinted entry is read and the
    next name probed together (both answer, even when one fails: nothing is left running): one
    round trip when the hint is the tail (an activation's take-over and fence, right after it
    read the log), where checking the hint, probing, then reading took three.
    """
    known: int | None = None
    if hint is not None and hint >= 1:
        results = await asyncio.gather(
            read_entry(store, zone, hint), entry_exists(store, zone, hint + 1),
            return_exceptions=True,
        )  # fmt: skip
        for result in results:
            if isinstance(result, BaseException):
                raise result
        hinted, more = results
        assert not isinstance(hinted, BaseException)
        assert isinstance(more, bool)
        if hinted is not None and not more:
            return hint, hinted
        # Past the hint: search on from the entry found; the hint gone (retention): from the
        # newest checkpoint, as without a hint.
        known = hint + 1 if more else None
    tail = await find_tail(store, zone, known=known)
    return tail, (await read_entry(store, zone, tail) if tail else None)


async def read_entries(
    store: ObjectStore, zone: str, after: int, *, window: int = READ_WINDOW
) -> AsyncGenerator[LogEntry, None]:
    """Entries ``after + 1, after + 2, ...`` in order, up to the first free number.

    Reads ahead concurrently, starting with one entry and doubling up to ``window`` reads in
    flight while entries keep coming (one more per entry read: doubling per round trip), so
    polling an idle log costs one request, a short log about as many reads past its tail as it
    had entries (doubling per entry read 16 past a log of 4), and a long replay keeps
    ``window`` GETs going (a sliding window: a slow read holds back only the entries after
    it, not a whole batch).
    """
    issued = after + 1
    ahead = 1
    pending: deque[asyncio.Task[LogEntry | None]] = deque()
    at_end = False
    try:
        while True:
            while len(pending) < ahead:
                pending.append(asyncio.ensure_future(read_entry(store, zone, issued)))
                issued += 1
            entry = await pending.popleft()
            if entry is None:
                at_end = True
                return
            yield entry
            ahead = min(ahead + 1, window)  # two reads for each one answered
    finally:
        # At the end the reads ahead are past the tail: let them answer (quickly: not found)
        # rather than cancel them, since a cancelled read can leave a store's work running in
        # a thread. Cancel them only when the caller stopped early.
        if not at_end:
            for task in pending:
                task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class LogWriter:
    """Appends entries of one (term, epoch) for one writer; fenced for good once a newer
    (term, epoch) wrote (see the module docstring for the rule).

    Call :meth:`write_fence` first (it finds the tail and claims the log for this epoch), then
    :meth:`append`. ``guard`` is consulted before every write and raises ``NotLeader`` when it
    returns False: pass ``lambda: keeper.is_leader and keeper.epoch == epoch`` so that a holder
    whose lease lapsed stops by itself. ``term`` is the primary record's term this writer runs
    under (read it when the writer starts, never remember it across writers); 0 for callers
    that do not know terms, which then fence by epoch alone. The writer is not safe for
    concurrent appends; callers serialise them (one writer task per zone).
    """

    def __init__(
        self,
        store: ObjectStore,
        zone: str,
        epoch: int,
        writer_id: str,
        *,
        clock: Clock | None = None,
        guard: Callable[[], bool] | None = None,
        term: int = 0,
        tail_hint: int | None = None,
    ) -> None:
        """``tail_hint``: an entry number the caller has read (an activation's catalog of the
        log), where :meth:`write_fence` looks for the tail from if it is still there."""
        if epoch < 1:
            raise ValueError(f"epoch must be >= 1, got {epoch}")
        if term < 0:
            raise ValueError(f"term must be >= 0, got {term}")
        self._store = store
        self._zone = check_zone(zone)
        self._epoch = epoch
        self._term = term
        self._writer_id = writer_id
        self._clock = clock or SystemClock()
        self._guard = guard
        self._next_seq: int | None = None
        self._tail_hint = tail_hint
        self._fence: LogEntry | None = None
        self._fenced_by: Fenced | None = None
        self._unknown: deque[str] = deque(maxlen=256)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def term(self) -> int:
        """The pair-wide term written into every entry (0: written without a term)."""
        return self._term

    @property
    def order(self) -> tuple[int, int]:
        """``(term, epoch)``, compared with :attr:`LogEntry.order` of the entries met."""
        return (self._term, self._epoch)

    @property
    def zone(self) -> str:
        return self._zone

    @property
    def next_seq(self) -> int | None:
        """Where the next append will try to write; None until the tail is known."""
        return self._next_seq

    @property
    def is_fenced(self) -> bool:
        return self._fenced_by is not None

    async def write_fence(self, *, reason: str = "") -> LogEntry:
        """Claim the log for this epoch: a ``fence`` entry at the next free number.

        Entries of a lower (term, epoch) found on the way (an old leader still finishing, or the
        writer of a zone that has just lost the primary) are stepped over; a higher one raises
        ``Fenced``. Calling it again after success is a no-op.
        """
        if self._fence is not None:
            return self._fence
        self._check_usable()
        if self._next_seq is None:
            tail, newest = await newest_entry(self._store, self._zone, hint=self._tail_hint)
        else:
            tail = await find_tail(self._store, self._zone, known=self._next_seq - 1)
            newest = await read_entry(self._store, self._zone, tail) if tail else None
        if newest is not None:
            self._judge(newest, "", fencing=True)  # a newer epoch already there: Fenced
        self._next_seq = tail + 1
        payload = FencePayload(
            epoch=self._epoch,
            previous_epoch=newest.epoch if newest else 0,
            by=self._writer_id,
            reason=reason,
        )
        self._fence = fence = await self._append(payload, fencing=True)
        assert isinstance(fence.payload, FencePayload)
        log.info(
            "zone %s: fence written at entry %d, term %d, epoch %d (previous epoch %d) by %s",
            self._zone,
            fence.seq,
            self._term,
            self._epoch,
            fence.payload.previous_epoch,
            self._writer_id,
        )
        return fence

    async def append(self, payload: Payload) -> LogEntry:
        """Commit ``payload`` as the next entry and return it.

        Raises ``Fenced`` (now and forever after) when a higher (term, epoch) owns the log,
        ``NotLeader`` when the guard refuses, ``SplitBrain`` when someone else wrote with our
        (term, epoch) or a lower one after our fence. Storage errors propagate; the outcome of
        such an append is unknown and is settled by the next one (an entry that did land is
        stepped over).
        """
        if self._fence is None:
            raise RuntimeError("write_fence() must succeed before append()")
        return await self._append(payload, fencing=False)

    def _check_usable(self) -> None:
        if self._fenced_by is not None:
            raise self._fenced_by
        if self._guard is not None and not self._guard():
            raise NotLeader(f"zone {self._zone}: epoch {self._epoch} is not held by this agent")

    async def _append(self, payload: Payload, *, fencing: bool) -> LogEntry:
        nonce = uuid.uuid4().hex
        self._unknown.append(nonce)  # until we know: a lost response may still have landed
        while True:
            self._check_usable()
            assert self._next_seq is not None
            entry = LogEntry(
                seq=self._next_seq,
                epoch=self._epoch,
                term=self._term,
                writer=self._writer_id,
                nonce=nonce,
                time=self._clock.now(),
                payload=payload,
            )
            existing = await self._try_create(entry, fencing=fencing)
            if existing is None or existing.nonce == nonce:
                self._unknown.remove(nonce)
                self._next_seq = entry.seq + 1
                return existing or entry
            if not isinstance(payload, FencePayload):
                self._next_seq = entry.seq + 1  # stepped over our own earlier entry
                continue
            newest = await self._catch_up(existing)
            self._next_seq = newest.seq + 1
            previous = max(payload.previous_epoch, newest.epoch)
            payload = payload.model_copy(update={"previous_epoch": previous})

    async def _try_create(self, entry: LogEntry, *, fencing: bool) -> LogEntry | None:
        """Create ``entry``: None when it was written, else the (judged) entry under its name."""
        key = log_key(self._zone, entry.seq)
        for _ in range(3):
            try:
                await self._store.put(key, entry.encode(), if_none_match=True)
            except PreconditionFailed:
                existing = await read_entry(self._store, self._zone, entry.seq)
            else:
                return None
            if existing is not None:
                self._judge(existing, entry.nonce, fencing=fencing)
                return existing
        raise LogCorrupted(f"{key}: create-only writes refused, yet no entry can be read")

    async def _catch_up(self, stepped: LogEntry) -> LogEntry:
        """While fencing, jump to the current tail instead of chasing a busy old writer one
        entry at a time. ``(term, epoch)`` never decreases along the log, so judging the newest
        entry judges every one in between."""
        tail = await find_tail(self._store, self._zone, known=stepped.seq)
        newest = await read_entry(self._store, self._zone, tail) if tail > stepped.seq else None
        if newest is None:
            return stepped
        self._judge(newest, "", fencing=True)
        return newest

    def _judge(self, existing: LogEntry, nonce: str, *, fencing: bool) -> None:
        """Accept an entry found under a name we wanted (ours, or one to step over), or raise
        ``Fenced`` (higher (term, epoch)) or ``SplitBrain`` (anyone else)."""
        if existing.order > self.order:
            self._fenced_by = Fenced(
                self._zone,
                self._epoch,
                existing.seq,
                existing.epoch,
                existing.writer,
                term=self._term,
                newer_term=existing.term,
            )
            log.error("zone %s: %s; this writer stops for good", self._zone, self._fenced_by)
            raise self._fenced_by
        if existing.writer == self._writer_id and existing.nonce == nonce:
            return  # our own write; only its response was lost
        if existing.writer == self._writer_id and existing.nonce in self._unknown:
            self._unknown.remove(existing.nonce)
            return  # an earlier append whose outcome was unknown did land
        if fencing and (existing.order < self.order or existing.writer == self._writer_id):
            return  # an older leader (or term) still finishing before our fence
        log.critical(
            "zone %s: SPLIT BRAIN: entry %d has term %d, epoch %d by %s, we are term %d, "
            "epoch %d (%s)%s",
            self._zone,
            existing.seq,
            existing.term,
            existing.epoch,
            existing.writer,
            self._term,
            self._epoch,
            self._writer_id,
            "" if fencing else " after our fence",
        )
        raise SplitBrain(
            f"zone {self._zone}: entry {existing.seq} written by {existing.writer!r} with term "
            f"{existing.term}, epoch {existing.epoch} where writer {self._writer_id!r} of term "
            f"{self._term}, epoch {self._epoch} appends"
        )
