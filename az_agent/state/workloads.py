"""``<zone>/workloads.json``: how many replicas each of a cold zone's workloads ran while the
zone was last active, so an activation scales them from zero back to that size.

Only the zone's own agent writes it (its leader while active, and a pause before scaling down),
with plain puts: the record is a hint for sizing, not a lock. A count of 0 is never recorded:
a zone scaled down keeps the size it had (:meth:`ZoneWorkloads.observe`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from az_agent.drivers.errors import NotFound
from az_agent.drivers.kubernetes.base import Workload, WorkloadKind
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state.errors import StateError
from az_agent.state.keys import check_zone, workloads_key


class WorkloadsCorrupted(StateError):
    """``workloads.json`` holds something that is not a workloads record."""


class _Camel(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True
    )


class RecordedWorkload(_Camel):
    namespace: str
    kind: WorkloadKind
    name: str
    replicas: int = Field(ge=1)

    @property
    def ref(self) -> tuple[str, WorkloadKind, str]:
        return self.namespace, self.kind, self.name


class ZoneWorkloads(_Camel):
    """The JSON in ``<zone>/workloads.json``; ``recorded_at`` and ``epoch`` (of the leader
    that wrote it) are for people."""

    zone: str
    recorded_at: datetime
    epoch: int = Field(default=0, ge=0)
    workloads: list[RecordedWorkload] = Field(default_factory=list)

    def replicas(self, namespace: str, kind: WorkloadKind, name: str) -> int | None:
        """The recorded count of one workload, None when it was never recorded."""
        for item in self.workloads:
            if item.ref == (namespace, kind, name):
                return item.replicas
        return None

    def counts(self) -> dict[tuple[str, WorkloadKind, str], int]:
        return {item.ref: item.replicas for item in self.workloads}

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> ZoneWorkloads:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise WorkloadsCorrupted(f"{key}: not a workloads record: {exc}") from exc


def observe(
    previous: ZoneWorkloads | None,
    seen: Iterable[Workload],
    *,
    zone: str,
    epoch: int,
    now: datetime,
) -> ZoneWorkloads | None:
    """The record after seeing ``seen``, or None when nothing changed (no write needed).

    A workload at 0 keeps its recorded count (a scaled-down zone must not forget its size) and
    is left out when it has none; workloads no longer seen keep theirs (a selector that matches
    less for a while, or a workload deleted and created again).
    """
    counts = previous.counts() if previous is not None else {}
    updated = dict(counts)
    for workload in seen:
        if workload.replicas > 0:
            updated[(workload.namespace, workload.kind, workload.name)] = workload.replicas
    if previous is not None and updated == counts:
        return None
    return ZoneWorkloads(
        zone=check_zone(zone),
        recorded_at=now,
        epoch=epoch,
        workloads=[
            RecordedWorkload(namespace=ns, kind=kind, name=name, replicas=replicas)
            for (ns, kind, name), replicas in sorted(updated.items())
        ],
    )


async def read_workloads(store: ObjectStore, zone: str) -> ZoneWorkloads | None:
    """``zone``'s record, None when it never recorded one; ``WorkloadsCorrupted`` if unreadable."""
    key = workloads_key(zone)
    try:
        data, _ = await store.get(key)
    except NotFound:
        return None
    return ZoneWorkloads.decode(data, key)


async def write_workloads(store: ObjectStore, record: ZoneWorkloads) -> None:
    await store.put(workloads_key(record.zone), record.encode())
