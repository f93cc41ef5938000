"""Typed views of what the controller returns: table names, segment ZK metadata, pause state.

Parsing is lenient the way Pinot's own readers are: unknown keys are kept in ``raw``, missing
ones become ``None``, and every ZK value (always a string on the wire) is converted here, once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from az_agent.drivers.pinot.segments import LLCSegmentName

JsonObject = dict[str, Any]

_TIME_UNIT_MS = {
    "MILLISECONDS": 1,
    "SECONDS": 1000,
    "MINUTES": 60_000,
    "HOURS": 3_600_000,
    "DAYS": 86_400_000,
}


class TableType(StrEnum):
    OFFLINE = "OFFLINE"
    REALTIME = "REALTIME"

    @property
    def suffix(self) -> str:
        return f"_{self.value}"


def table_type_of(name: str) -> TableType | None:
    """The type named by a ``_OFFLINE``/``_REALTIME`` suffix, ``None`` for a raw name."""
    for table_type in TableType:
        if name.endswith(table_type.suffix):
            return table_type
    return None


def raw_table_name(name: str) -> str:
    """``myTable_OFFLINE`` -> ``myTable``; a raw name is returned unchanged."""
    table_type = table_type_of(name)
    return name[: -len(table_type.suffix)] if table_type else name


@dataclass(frozen=True, slots=True, order=True)
class TableRef:
    """One physical table: a raw name and a type."""

    raw: str
    type: TableType

    @property
    def name_with_type(self) -> str:
        return f"{self.raw}{self.type.suffix}"

    @classmethod
    def parse(cls, name: str, table_type: TableType | None = None) -> TableRef:
        """From a typed name, or a raw name plus ``table_type``; ``ValueError`` if neither."""
        suffix_type = table_type_of(name)
        if suffix_type is not None and table_type is not None and suffix_type != table_type:
            raise ValueError(f"table {name!r} does not match table type {table_type}")
        resolved = suffix_type or table_type
        if resolved is None:
            raise ValueError(f"table {name!r} has no type suffix and no type was given")
        return cls(raw_table_name(name), resolved)

    def __str__(self) -> str:
        return self.name_with_type


class SegmentStatus(StrEnum):
    """``segment.realtime.status``; absent means UPLOADED (every OFFLINE segment)."""

    IN_PROGRESS = "IN_PROGRESS"
    COMMITTING = "COMMITTING"
    DONE = "DONE"
    UPLOADED = "UPLOADED"


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _non_negative(value: str | None) -> int | None:
    parsed = _int(value)
    return parsed if parsed is not None and parsed >= 0 else None


def zk_crc(fields: Mapping[str, Any]) -> int | None:
    """``segment.crc`` of a segment's ZK metadata: a decimal string (a number is taken as
    well); None when absent or negative (not computed yet)."""
    value = fields.get("segment.crc")
    return _non_negative(value if value is None or isinstance(value, str) else json.dumps(value))


def _millis(value: str | None, unit: str | None) -> int | None:
    parsed = _int(value)
    if parsed is None or parsed < 0:
        return None
    return parsed * _TIME_UNIT_MS.get((unit or "MILLISECONDS").upper(), 1)


@dataclass(frozen=True, slots=True)
class SegmentMetadata:
    """One segment's ZooKeeper metadata (``GET /segments/{t}/zkmetadata`` or ``.../metadata``).

    ``crc`` is ``None`` when ZK has no ``segment.crc`` (a consuming segment, or no
    ``creation.meta``). ``download_url`` is ``""`` for a peer-only segment, ``None`` when absent.
    Offsets stay strings: they are stream-specific (Kafka offsets are numbers, others are not).
    """

    table: TableRef
    name: str
    status: SegmentStatus
    crc: int | None
    data_crc: int | None
    creation_time_ms: int | None
    push_time_ms: int | None
    refresh_time_ms: int | None
    start_time_ms: int | None
    end_time_ms: int | None
    total_docs: int | None
    size_bytes: int | None
    download_url: str | None
    start_offset: str | None
    end_offset: str | None
    raw: Mapping[str, str] = field(repr=False, compare=False)

    @classmethod
    def from_zk(cls, table: TableRef, name: str, fields: Mapping[str, Any]) -> SegmentMetadata:
        raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        status_text = raw.get("segment.realtime.status") or SegmentStatus.UPLOADED.value
        try:
            status = SegmentStatus(status_text)
        except ValueError:
            status = SegmentStatus.IN_PROGRESS  # unknown future state: treat as not complete
        unit = raw.get("segment.time.unit")
        return cls(
            table=table,
            name=name,
            status=status,
            crc=zk_crc(raw),
            data_crc=_non_negative(raw.get("segment.data.crc")),
            creation_time_ms=_non_negative(raw.get("segment.creation.time")),
            push_time_ms=_non_negative(raw.get("segment.push.time")),
            refresh_time_ms=_non_negative(raw.get("segment.refresh.time")),
            start_time_ms=_millis(raw.get("segment.start.time"), unit),
            end_time_ms=_millis(raw.get("segment.end.time"), unit),
            total_docs=_non_negative(raw.get("segment.total.docs")),
            size_bytes=_non_negative(raw.get("segment.size.in.bytes")),
            download_url=_download_url(raw),
            start_offset=raw.get("segment.realtime.startOffset"),
            end_offset=raw.get("segment.realtime.endOffset"),
            raw=raw,
        )

    @property
    def llc_name(self) -> LLCSegmentName | None:
        return LLCSegmentName.parse(self.name)

    @property
    def is_backup_ready(self) -> bool:
        """Complete and durable in the controller's deep store (§2 of the reference).

        Committed (``DONE``) or pushed (``UPLOADED``), with a CRC, and with a non-empty
        download URL (``""`` means only peer servers hold it; the controller cannot serve it
        until it is uploaded to the deep store). Consuming and pauseless ``COMMITTING``
        segments are not ready. Refreshes are caught by tracking ``(name, crc)``.
        """
        return (
            self.status in (SegmentStatus.DONE, SegmentStatus.UPLOADED)
            and self.crc is not None
            and bool(self.download_url)
        )

    @property
    def completed_at_ms(self) -> int | None:
        """When the segment became complete as far as ZK tells: refresh, push or creation time."""
        return self.refresh_time_ms or self.push_time_ms or self.creation_time_ms


def _download_url(raw: Mapping[str, str]) -> str | None:
    for key in (
        "segment.download.url",
        "segment.offline.download.url",
        "segment.realtime.download.url",
    ):
        if key in raw:
            return raw[key]
    return None


def is_backup_ready(segment: SegmentMetadata) -> bool:
    """Function form of :attr:`SegmentMetadata.is_backup_ready`, for filters."""
    return segment.is_backup_ready


@dataclass(frozen=True, slots=True)
class PauseStatus:
    """``pauseConsumption``/``resumeConsumption``/``pauseStatus`` answers (1.3+ and <= 1.2)."""

    paused: bool
    consuming_segments: tuple[str, ...]
    reason_code: str | None
    comment: str | None
    timestamp: str | None

    @property
    def is_flushed(self) -> bool:
        """Paused with every consuming segment committed (§5 "Flushed" test)."""
        return self.paused and not self.consuming_segments

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PauseStatus:
        comment = body.get("comment", body.get("description"))
        return cls(
            paused=bool(body.get("pauseFlag", False)),
            consuming_segments=tuple(sorted(body.get("consumingSegments") or ())),
            reason_code=body.get("reasonCode"),
            comment=comment,
            timestamp=body.get("timestamp"),
        )


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One server's report on one consuming segment."""

    server: str
    state: str
    last_consumed_timestamp_ms: int | None
    current_offsets: dict[str, str]
    latest_upstream_offsets: dict[str, str]
    records_lag: dict[str, str]
    availability_lag_ms: dict[str, str]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ConsumerInfo:
        offsets = body.get("partitionOffsetInfo") or {}
        current = offsets.get("currentOffsetsMap") or body.get("partitionToOffsetMap") or {}
        return cls(
            server=str(body.get("serverName", "")),
            state=str(body.get("consumerState", "")),
            last_consumed_timestamp_ms=body.get("lastConsumedTimestamp"),
            current_offsets={str(k): str(v) for k, v in current.items()},
            latest_upstream_offsets=_str_map(offsets.get("latestUpstreamOffsetMap")),
            records_lag=_str_map(offsets.get("recordsLagMap")),
            availability_lag_ms=_str_map(offsets.get("availabilityLagMsMap")),
        )


def _str_map(value: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


@dataclass(frozen=True, slots=True)
class ConsumingSegmentsInfo:
    """``GET /tables/{t}/consumingSegmentsInfo``: every CONSUMING segment and its consumers."""

    segments: dict[str, tuple[ConsumerInfo, ...]]
    servers_failing_to_respond: int
    servers_unparsable_respond: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ConsumingSegmentsInfo:
        mapping = body.get("_segmentToConsumingInfoMap") or {}
        return cls(
            segments={
                name: tuple(ConsumerInfo.from_json(item) for item in infos or ())
                for name, infos in mapping.items()
            },
            servers_failing_to_respond=int(body.get("serversFailingToRespond", 0)),
            servers_unparsable_respond=int(body.get("serversUnparsableRespond", 0)),
        )


@dataclass(frozen=True, slots=True)
class Watermark:
    """Where a partition resumes: the next sequence number and the first unsealed offset."""

    partition: int
    sequence: int
    offset: int


@dataclass(frozen=True, slots=True)
class UploadResult:
    """A successful segment upload: the segment name as Pinot read it, and its message."""

    table: TableRef
    segment: str
    message: str


class InstanceKind(StrEnum):
    """The role an instance name starts with (``CommonConstants.Helix.PREFIX_OF_*``)."""

    CONTROLLER = "Controller"
    BROKER = "Broker"
    SERVER = "Server"
    MINION = "Minion"

    @classmethod
    def of(cls, name: str) -> InstanceKind | None:
        """``Broker_host_8099`` -> BROKER; None for a name with no known prefix."""
        for kind in cls:
            if name.startswith(f"{kind.value}_"):
                return kind
        return None


@dataclass(frozen=True, slots=True)
class ClusterInstances:
    """Who is registered (``GET /instances``) and who of them is live (``GET /liveinstances``,
    Helix's ``LIVEINSTANCES``): a registered instance that is not live is down."""

    registered: tuple[str, ...]
    live: frozenset[str]

    def of_kind(self, kind: InstanceKind) -> list[str]:
        return sorted(n for n in self.registered if InstanceKind.of(n) is kind)

    def live_of_kind(self, kind: InstanceKind) -> list[str]:
        return [n for n in self.of_kind(kind) if n in self.live]

    def down_of_kind(self, kind: InstanceKind) -> list[str]:
        return [n for n in self.of_kind(kind) if n not in self.live]


class IngestionState(StrEnum):
    """``TableStatus.IngestionState``."""

    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class IngestionStatus:
    """``GET /tables/{t}/status?type=``'s ``ingestionStatus``: for a REALTIME table, HEALTHY
    when every replica of every consuming segment answers and reports ``CONSUMING``."""

    state: IngestionState
    error: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> IngestionStatus:
        status = body.get("ingestionStatus") or {}
        try:
            state = IngestionState(str(status.get("ingestionState", "UNKNOWN")))
        except ValueError:
            state = IngestionState.UNKNOWN  # a state added by a newer Pinot
        return cls(state, str(status.get("errorMessage") or ""))
