"""The typed records of the commit log: one entry per object, one payload kind per event.

Stored as camelCase JSON. Unknown fields are ignored so that an older agent can still read a
log written by a newer one; an unknown ``kind`` is an error (the reader cannot know what it
would have meant for the backup).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from az_agent.state.errors import LogCorrupted


class _Stored(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True
    )


class SegmentPayload(_Stored):
    """A Pinot segment is durable in the bucket at ``key`` (written before this entry)."""

    kind: Literal["segment"] = "segment"
    table: str
    table_type: Literal["OFFLINE", "REALTIME"]
    segment: str
    crc: str
    size: int = Field(ge=0)
    sha256: str
    key: str
    start_time_ms: int | None = None
    end_time_ms: int | None = None
    commit_time_ms: int | None = Field(None, description="Pinot's commit/push time, ms.")
    backed_up_at: datetime
    partition: int | None = None
    start_offset: str | None = None
    end_offset: str | None = None


class DumpPayload(_Stored):
    """A PostgreSQL dump is durable at ``key``; the entry's seq is the dump's id."""

    kind: Literal["dump"] = "dump"
    database: str
    key: str
    size: int = Field(ge=0)
    sha256: str
    server_version: str = ""
    started_at: datetime
    finished_at: datetime


class DumpDeletedPayload(_Stored):
    """Retention removed the dump recorded at ``dump_seq``; it is no longer restorable."""

    kind: Literal["dump-deleted"] = "dump-deleted"
    database: str
    dump_seq: int
    key: str


class SegmentDeletedPayload(_Stored):
    """Pinot no longer holds this segment: it was absent from two consecutive polls of its
    table (or its table from two consecutive table lists). From this entry on the segment is
    not part of the live backup; its objects stay until retention purges them."""

    kind: Literal["segment-deleted"] = "segment-deleted"
    table: str
    segment: str
    crc: str = Field(default="", description="The version the backup held when it was deleted.")


class SegmentsPurgedPayload(_Stored):
    """Retention removes the objects of these deleted segments (every version): the catalog
    forgets them. Written before the objects are deleted; a segment backed up again since
    its deletion is live and is not purged."""

    kind: Literal["segments-purged"] = "segments-purged"
    segments: list[tuple[str, str]] = Field(description="(table, segment) pairs.")


class TableConfigPayload(_Stored):
    kind: Literal["table-config"] = "table-config"
    name: str
    key: str
    sha256: str


class SchemaPayload(_Stored):
    kind: Literal["schema"] = "schema"
    name: str
    key: str
    sha256: str


class PausedPayload(_Stored):
    """The handover record written by a clean pause; extra fields are kept, not dropped."""

    model_config = ConfigDict(
        frozen=True, extra="allow", alias_generator=to_camel, populate_by_name=True
    )
    kind: Literal["paused"] = "paused"
    epoch: int
    newest_segment_seq: int | None = None
    dump_seqs: dict[str, int] = Field(default_factory=dict)
    checksums: dict[str, str] = Field(default_factory=dict)
    forced: bool = False
    detail: str = ""


class FencePayload(_Stored):
    """A new epoch takes the log over: entries of older epochs may not follow this one."""

    kind: Literal["fence"] = "fence"
    epoch: int
    previous_epoch: int
    by: str
    reason: str = ""


class ResumedPayload(_Stored):
    kind: Literal["resumed"] = "resumed"
    by: str
    detail: str = ""


Payload = Annotated[
    SegmentPayload
    | DumpPayload
    | DumpDeletedPayload
    | SegmentDeletedPayload
    | SegmentsPurgedPayload
    | TableConfigPayload
    | SchemaPayload
    | PausedPayload
    | FencePayload
    | ResumedPayload,
    Field(discriminator="kind"),
]


class LogEntry(_Stored):
    """One committed event. ``writer`` + ``nonce`` let a writer recognise its own lost write.

    ``term`` is the pair-wide fencing token (the primary record's term the writer ran under);
    entries written before terms existed read as term 0. Along one zone's log ``(term, epoch)``
    never decreases: see :meth:`order`.
    """

    seq: int = Field(ge=1)
    epoch: int = Field(ge=1)
    term: int = Field(default=0, ge=0)
    writer: str
    nonce: str
    time: datetime
    payload: Payload

    @property
    def order(self) -> tuple[int, int]:
        """``(term, epoch)``: an entry whose order is higher fences every writer below it."""
        return (self.term, self.epoch)

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> LogEntry:
        """Parse a stored entry; anything unparseable is ``LogCorrupted`` (never guessed at)."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise LogCorrupted(f"{key}: not a valid log entry: {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
