"""What the catalog remembers about each backed-up object, compact enough for a million.

Records are immutable slotted classes (shared safely with a checkpoint being written), times
are kept as POSIX floats (half the size of a datetime) and a segment's object key is stored
only when it is not the canonical one. Each record converts to and from a flat JSON row, the
unit of a checkpoint.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from az_agent.state.entries import (
    DumpPayload,
    LogEntry,
    SchemaPayload,
    SegmentPayload,
    TableConfigPayload,
)
from az_agent.state.keys import segment_key

Row = list[Any]


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


_NUMBERS = struct.Struct("<qqqqqqdd")
"""size, startTimeMs, endTimeMs, commitTimeMs, seq, epoch, backed-up and committed POSIX times:
packed in one bytes object (97 bytes) instead of eight Python numbers (about 250)."""
NUMBERS_SIZE = _NUMBERS.size
_NONE = -(2**63)


def _opt(value: int) -> int | None:
    return None if value == _NONE else value


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """One Pinot segment version (table, name, CRC) that is part of the backup.

    The numeric fields live packed in ``numbers`` (a million records add up); read them
    through the properties of the same names.
    """

    zone: str
    table: str
    table_type: str
    name: str
    crc: str
    sha256: str
    key_override: str | None
    partition: int | None
    start_offset: str | None
    end_offset: str | None
    numbers: bytes

    @classmethod
    def create(
        cls,
        *,
        zone: str,
        table: str,
        table_type: str,
        name: str,
        crc: str,
        sha256: str,
        key_override: str | None,
        partition: int | None,
        start_offset: str | None,
        end_offset: str | None,
        size: int,
        start_time_ms: int | None,
        end_time_ms: int | None,
        commit_time_ms: int | None,
        seq: int,
        epoch: int,
        backed_up_ts: float,
        committed_ts: float,
    ) -> SegmentRecord:
        times = (start_time_ms, end_time_ms, commit_time_ms)
        numbers = _NUMBERS.pack(
            size, *(_NONE if t is None else t for t in times), seq, epoch, backed_up_ts,
            committed_ts,
        )  # fmt: skip
        return cls(
            zone, sys.intern(table), sys.intern(table_type), name, crc, sha256, key_override,
            partition, start_offset, end_offset, numbers,
        )  # fmt: skip

    def _unpack(self) -> tuple[Any, ...]:
        return _NUMBERS.unpack(self.numbers)

    @property
    def size(self) -> int:
        return int(self._unpack()[0])

    @property
    def start_time_ms(self) -> int | None:
        return _opt(self._unpack()[1])

    @property
    def end_time_ms(self) -> int | None:
        return _opt(self._unpack()[2])

    @property
    def commit_time_ms(self) -> int | None:
        return _opt(self._unpack()[3])

    @property
    def seq(self) -> int:
        return int(self._unpack()[4])

    @property
    def epoch(self) -> int:
        return int(self._unpack()[5])

    @property
    def backed_up_ts(self) -> float:
        return float(self._unpack()[6])

    @property
    def committed_ts(self) -> float:
        return float(self._unpack()[7])

    @property
    def object_key(self) -> str:
        if self.key_override is not None:
            return self.key_override
        return segment_key(self.zone, self.table, self.name, self.crc)

    @property
    def backed_up_at(self) -> datetime:
        return _time(self.backed_up_ts)

    @property
    def committed_at(self) -> datetime:
        """When its log entry was committed: the instant it became part of the backup."""
        return _time(self.committed_ts)

    @classmethod
    def from_entry(cls, zone: str, entry: LogEntry, payload: SegmentPayload) -> SegmentRecord:
        canonical = segment_key(zone, payload.table, payload.segment, payload.crc)
        return cls.create(
            zone=zone,
            table=payload.table,
            table_type=payload.table_type,
            name=payload.segment,
            crc=payload.crc,
            sha256=payload.sha256,
            key_override=None if payload.key == canonical else payload.key,
            partition=payload.partition,
            start_offset=payload.start_offset,
            end_offset=payload.end_offset,
            size=payload.size,
            start_time_ms=payload.start_time_ms,
            end_time_ms=payload.end_time_ms,
            commit_time_ms=payload.commit_time_ms,
            seq=entry.seq,
            epoch=entry.epoch,
            backed_up_ts=payload.backed_up_at.timestamp(),
            committed_ts=entry.time.timestamp(),
        )

    def to_row(self) -> Row:
        size, start, end, commit, seq, epoch, backed_up, committed = self._unpack()
        return [
            "s", self.table, self.table_type, self.name, self.crc, size, self.sha256,
            self.key_override, _opt(start), _opt(end), _opt(commit), backed_up, self.partition,
            self.start_offset, self.end_offset, seq, epoch, committed,
        ]  # fmt: skip

    @classmethod
    def from_row(cls, zone: str, row: Row) -> SegmentRecord:
        (_, table, table_type, name, crc, size, sha256, key_override, start, end, commit,
         backed_up, partition, start_offset, end_offset, seq, epoch, committed) = row  # fmt: skip
        return cls.create(
            zone=zone, table=table, table_type=table_type, name=name, crc=crc, sha256=sha256,
            key_override=key_override, partition=partition, start_offset=start_offset,
            end_offset=end_offset, size=size, start_time_ms=start, end_time_ms=end,
            commit_time_ms=commit, seq=seq, epoch=epoch, backed_up_ts=backed_up,
            committed_ts=committed,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DumpRecord:
    """One PostgreSQL dump; ``seq`` (its log entry) is its id."""

    database: str
    key: str
    size: int
    sha256: str
    server_version: str
    started_at: datetime
    finished_at: datetime
    seq: int
    epoch: int
    committed_ts: float

    @property
    def committed_at(self) -> datetime:
        return _time(self.committed_ts)

    @classmethod
    def from_entry(cls, entry: LogEntry, payload: DumpPayload) -> DumpRecord:
        return cls(
            database=payload.database,
            key=payload.key,
            size=payload.size,
            sha256=payload.sha256,
            server_version=payload.server_version,
            started_at=payload.started_at,
            finished_at=payload.finished_at,
            seq=entry.seq,
            epoch=entry.epoch,
            committed_ts=entry.time.timestamp(),
        )

    def to_row(self) -> Row:
        return [
            "d", self.database, self.key, self.size, self.sha256, self.server_version,
            self.started_at.isoformat(), self.finished_at.isoformat(), self.seq, self.epoch,
            self.committed_ts,
        ]  # fmt: skip

    @classmethod
    def from_row(cls, row: Row) -> DumpRecord:
        (_, database, key, size, sha256, version, started, finished, seq, epoch, ts) = row
        return cls(
            database,
            key,
            size,
            sha256,
            version,
            datetime.fromisoformat(started),
            datetime.fromisoformat(finished),
            seq,
            epoch,
            ts,
        )


@dataclass(frozen=True, slots=True)
class SegmentDeletion:
    """A segment Pinot no longer holds, as of its ``segment-deleted`` entry."""

    table: str
    name: str
    seq: int
    committed_ts: float

    @property
    def committed_at(self) -> datetime:
        return _time(self.committed_ts)

    def to_row(self) -> Row:
        return ["x", self.table, self.name, self.seq, self.committed_ts]

    @classmethod
    def from_row(cls, row: Row) -> SegmentDeletion:
        (_, table, name, seq, ts) = row
        return cls(table, name, seq, ts)


ConfigKind = Literal["table-config", "schema"]
_CONFIG_ROW = {"table-config": "t", "schema": "c"}


@dataclass(frozen=True, slots=True)
class ConfigRecord:
    """A saved Pinot table config or schema."""

    kind: ConfigKind
    name: str
    key: str
    sha256: str
    seq: int
    epoch: int
    committed_ts: float

    @property
    def committed_at(self) -> datetime:
        return _time(self.committed_ts)

    @classmethod
    def from_entry(
        cls, entry: LogEntry, payload: TableConfigPayload | SchemaPayload
    ) -> ConfigRecord:
        return cls(
            payload.kind,
            payload.name,
            payload.key,
            payload.sha256,
            entry.seq,
            entry.epoch,
            entry.time.timestamp(),
        )

    def to_row(self) -> Row:
        return [
            _CONFIG_ROW[self.kind], self.name, self.key, self.sha256, self.seq, self.epoch,
            self.committed_ts,
        ]  # fmt: skip

    @classmethod
    def from_row(cls, row: Row) -> ConfigRecord:
        (tag, name, key, sha256, seq, epoch, ts) = row
        kind: ConfigKind = "table-config" if tag == "t" else "schema"
        return cls(kind, name, key, sha256, seq, epoch, ts)
