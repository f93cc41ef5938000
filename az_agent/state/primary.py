"""The pair's leader lock: which zone of a failover group is primary, and the term that fences.

One object per failover group, ``primary/<group>.json`` (the store given is already prefixed),
``{zone, term, since, operationId, nonce}``. Exactly one zone of a group is primary; only the
primary zone's leader backs up. An activation commits by one compare-and-swap of this record
from ``{zone: <source>, term: t}`` to ``{zone: <self>, term: t + 1}``: of concurrent claims
(from either side) against the same version exactly one write lands, the others lose the
condition and get :class:`~az_agent.state.errors.PrimaryTaken`, so two cross-activations can
never leave two primaries.

``term`` is the pair-wide fencing token: it only grows (every successful claim adds exactly
one, nothing ever writes a lower one), every log entry carries the term its writer ran under
(:class:`~az_agent.state.log.LogWriter` ``term=``), and a writer that meets a higher term is
``Fenced``. Wall-clock ``since`` is for operators only. Every write carries a fresh ``nonce``:
S3 ETags repeat for identical bytes, and a driver that retried a write whose first response
was lost reports ``PreconditionFailed`` for it; reading the nonce back settles who won.

Contracts, in the manner of Patroni's DCS interface: each method does at most one conditional
write, never retries a lost condition, and returns only what is stored in the bucket (or was
stored by its own write). Storage errors (``Unavailable`` ...) propagate unchanged; after one,
the outcome of a write is unknown and the next :meth:`PrimaryLock.read` tells.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from az_agent.drivers.errors import NotFound, PreconditionFailed
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state.clock import Clock, SystemClock
from az_agent.state.errors import PrimaryCorrupted, PrimaryTaken
from az_agent.state.keys import check_group, check_zone, primary_key
from az_agent.state.log import last_entry

log = logging.getLogger(__name__)

DEFAULT_GROUP = "default"
"""The failover group of zones that configure none."""

_CREATE_ATTEMPTS = 3


class PrimaryRecord(BaseModel):
    """The JSON in ``primary/<group>.json``: ``zone`` is primary since ``since`` under ``term``.

    ``operationId`` names the activation that committed it (None when the record was created
    by :meth:`PrimaryLock.ensure` for a zone that was primary before the record existed).
    """

    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True
    )

    zone: str
    term: int = Field(ge=1)
    since: datetime
    operation_id: str | None = None
    nonce: str = Field(description="Fresh per write: S3 ETags repeat for identical bytes.")
    previous_zone: str | None = None
    """The zone the claim took the primary from (None when created by ``ensure``)."""
    automatic: str | None = None
    """Why an automatic failover claimed it (``lease-expired``, ``unhealthy``); None when an
    operator did. A zone taken over automatically never takes it back automatically."""

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> PrimaryRecord:
        """Parse a stored record; anything else is ``PrimaryCorrupted`` (never guessed at)."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise PrimaryCorrupted(f"{key}: not a primary record: {exc}") from exc


@dataclass(frozen=True, slots=True)
class PrimaryObservation:
    """One read of the record: both None when it does not exist. ``version`` is the store's
    token for compare-and-swap; pass the observation back as ``claim(expected=...)``."""

    record: PrimaryRecord | None
    version: str | None

    def __post_init__(self) -> None:
        if (self.record is None) != (self.version is None):
            raise ValueError("a primary observation has both a record and a version, or neither")

    @property
    def zone(self) -> str | None:
        return None if self.record is None else self.record.zone

    @property
    def term(self) -> int:
        """The record's term; 0 when there is no record."""
        return 0 if self.record is None else self.record.term


async def highest_term(store: ObjectStore, zones: Iterable[str]) -> int:
    """The highest term carried by the newest entry of each zone's log (0: none, or old logs).

    Along one log ``(term, epoch)`` never decreases, so the newest entry carries its highest
    term.
    """
    highest = 0
    for zone in zones:
        newest = await last_entry(store, zone)
        if newest is not None:
            highest = max(highest, newest.term)
    return highest


class PrimaryLock:
    """Reads, creates and claims the primary record of one failover group.

    Holds no state between calls and takes no lock: the store's conditional writes are the only
    serialisation, so any number of instances (in either zone) may act at once.
    """

    def __init__(
        self, store: ObjectStore, group: str = DEFAULT_GROUP, *, clock: Clock | None = None
    ) -> None:
        self._store = store
        self._group = check_group(group)
        self._key = primary_key(group)
        self._clock = clock or SystemClock()

    @property
    def group(self) -> str:
        return self._group

    @property
    def key(self) -> str:
        return self._key

    async def read(self) -> PrimaryObservation:
        """The record and its version as stored now; ``PrimaryObservation(None, None)`` when
        absent. Read only. Raises ``PrimaryCorrupted`` for an unparseable object."""
        try:
            data, info = await self._store.get(self._key)
        except NotFound:
            return PrimaryObservation(None, None)
        return PrimaryObservation(PrimaryRecord.decode(data, self._key), info.version)

    async def ensure(self, zone: str) -> PrimaryRecord:
        """The stored record, created for ``zone`` first if the group has none.

        For buckets from before the record existed: the first leader of the group to call it
        makes its own zone primary, so on such a bucket the zone that was backing up should get
        there first (a standby's leader calling it first would win). An existing record is
        returned unchanged, whoever it names, without a write. An absent one is created
        create-only with term ``1 + highest term in zone's log`` (term 1 for a log without
        terms), so a term never goes below one already written there. Of concurrent callers
        exactly one creates; the others (and a caller whose create landed but whose response
        was lost) get the stored record. Check ``record.zone == zone`` to learn whether
        ``zone`` is primary.
        """
        check_zone(zone)
        observation = await self.read()
        if observation.record is not None:
            return observation.record
        term = await highest_term(self._store, [zone]) + 1
        record = self._new_record(zone, term, operation_id=None)
        for _ in range(_CREATE_ATTEMPTS):
            try:
                await self._store.put(self._key, record.encode(), if_none_match=True)
            except PreconditionFailed:
                observation = await self.read()
            else:
                log.info(
                    "failover group %s: primary record created for zone %s, term %d",
                    self._group,
                    zone,
                    term,
                )
                return record
            if observation.record is not None:
                return observation.record
        raise PrimaryCorrupted(f"{self._key}: create-only writes refused, yet nothing to read")

    async def claim(
        self,
        *,
        source: str,
        zone: str,
        operation_id: str,
        expected: PrimaryObservation | None = None,
        automatic: str | None = None,
    ) -> PrimaryRecord:
        """Make ``zone`` primary in place of ``source``: the commit point of an activation.

        Atomic: one compare-and-swap of the record from ``{zone: source, term: t}`` (the
        version in ``expected``, or read now when None) to ``{zone: zone, term: t + 1,
        operationId: operation_id}``; returns the record written. Of any number of concurrent
        claims against one version exactly one lands. Outcomes:

        * the record names ``source``: the CAS above. Losing it (``PreconditionFailed``) is
          never retried: the record is read back and ``PrimaryTaken`` names the winner's zone
          and term -- unless it is our own write whose response was lost (our nonce), or the
          same activation claimed concurrently (``zone`` + ``operation_id``): then it is
          returned. A stale ``expected`` loses the same way.
        * the record names ``zone`` with ``operation_id``: an activation resumed after a
          restart; returned unchanged, no write (idempotent).
        * the record names ``zone`` under another operation (or none): ``PrimaryTaken`` with
          ``zone`` itself -- this zone is primary already, nothing to commit.
        * the record names a third zone: ``PrimaryTaken`` naming it, no write.
        * no record: nothing names a primary, so ``source`` cannot be checked and is not; the
          record is created create-only with term ``1 + highest term in the logs of source and
          zone`` (term 1 on a bucket without terms), and a lost create is judged like a lost
          CAS. The activation's other checks (the source's lease, the fence in its log) still
          stand between it and a live source.

        Raises ``ValueError`` when ``source == zone``, ``PrimaryCorrupted`` for an unparseable
        record; storage errors propagate (outcome unknown: read, then decide).
        """
        check_zone(source)
        check_zone(zone)
        if source == zone:
            raise ValueError(f"zone {zone!r} cannot take the primary over from itself")
        observation = expected if expected is not None else await self.read()
        current = observation.record
        if current is None:
            term = await highest_term(self._store, [source, zone]) + 1
        elif current.zone == zone and current.operation_id == operation_id:
            return current
        elif current.zone != source:
            raise PrimaryTaken(self._group, current.zone, current.term, current.operation_id)
        else:
            term = current.term + 1
        record = self._new_record(zone, term, operation_id=operation_id).model_copy(
            update={"previous_zone": source, "automatic": automatic}
        )
        try:
            await self._store.put(
                self._key,
                record.encode(),
                if_none_match=observation.version is None,
                if_match=observation.version,
            )
        except PreconditionFailed:
            return await self._lost(record)
        log.info(
            "failover group %s: zone %s is primary, term %d (from %s, operation %s)",
            self._group,
            zone,
            term,
            f"{source} term {current.term}" if current else "no record",
            operation_id,
        )
        return record

    async def _lost(self, mine: PrimaryRecord) -> PrimaryRecord:
        """After a lost condition: ours after all, or raise. The same zone and operation is our
        own write whose response was lost (the driver's retry then reports the condition), or
        the same activation claimed concurrently by another incarnation: either way it holds."""
        stored = (await self.read()).record
        claimed = (mine.zone, mine.operation_id)
        if stored is not None and (stored.zone, stored.operation_id) == claimed:
            return stored
        if stored is None:  # a record deleted under us: still not ours, and never retried here
            raise PrimaryTaken(self._group, "<nobody>", 0, None)
        log.warning(
            "failover group %s: claim of zone %s (operation %s) lost: zone %s holds term %d",
            self._group,
            mine.zone,
            mine.operation_id,
            stored.zone,
            stored.term,
        )
        raise PrimaryTaken(self._group, stored.zone, stored.term, stored.operation_id)

    def _new_record(self, zone: str, term: int, *, operation_id: str | None) -> PrimaryRecord:
        return PrimaryRecord(
            zone=zone,
            term=term,
            since=self._clock.now(),
            operation_id=operation_id,
            nonce=uuid.uuid4().hex,
        )
