"""The Pinot controller as the agent needs it: discover segments, move their bytes, steer ingestion.

:class:`PinotController` is the whole surface the agent uses; :class:`HttpPinotController`
(``http.py``) implements it over the controller's REST API. Contract shared by every method:

* Table names: methods taking ``table: str`` accept a raw name (``myTable``) or a typed one
  (``myTable_REALTIME``), as the controller does; methods about one physical table take a
  :class:`TableRef`, because a raw name can be hybrid and Pinot would silently pick OFFLINE.
* Errors are those of :mod:`az_agent.drivers.pinot.errors` (a subtree of
  :mod:`az_agent.drivers.errors`); the controller's own message is in the exception text.
* One attempt per call, bounded by the configured timeout (for streams: per read, so a large
  segment is not cut off). ``Unavailable`` is safe to retry for every method: reads are
  idempotent, and uploads are too (the same CRC is a metadata-only refresh).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum

from az_agent.drivers.pinot.models import (
    ClusterInstances,
    ConsumingSegmentsInfo,
    IngestionStatus,
    JsonObject,
    PauseStatus,
    SegmentMetadata,
    TableRef,
    TableType,
    UploadResult,
    Watermark,
)
from az_agent.drivers.resource import AsyncResource

UploadBody = bytes | AsyncIterable[bytes]
"""A segment tarball for upload: whole bytes (tests), or a stream (a :class:`SizedStream` when
its length is known)."""


@dataclass(frozen=True, slots=True)
class SizedStream:
    """A stream whose length is known beforehand (an object read from the bucket): its upload
    declares that length instead of being chunked, where every chunk is re-framed, copied on
    the way out. A stream that ends short or raises still leaves the request incomplete."""

    chunks: AsyncIterable[bytes]
    size: int

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(self.chunks)


class ConsumeFrom(StrEnum):
    """Where resumed consumption starts (``resumeConsumption?consumeFrom=``)."""

    LAST_CONSUMED = "lastConsumed"
    """From the end offset of each partition's latest segment in ZK: no loss, no repeat."""
    SMALLEST = "smallest"
    LARGEST = "largest"


class SegmentDownload(abc.ABC):
    """A segment tarball being streamed from the controller; iterate once for its bytes.

    ``length`` is the ``Content-Length`` the controller announced (``None`` if it sent none);
    a body cut short raises ``Unavailable`` instead of ending normally, so a consumer that
    forwards the chunks elsewhere must discard what it received on error.
    """

    table: TableRef | str
    segment: str
    length: int | None

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[bytes]:
        """The tarball's bytes, in order, in chunks of at most the configured chunk size."""


def crcs_of(segments: Iterable[SegmentMetadata]) -> dict[str, str]:
    """Name -> CRC (decimal) of the segments that have one (consuming ones have none yet)."""
    return {s.name: str(s.crc) for s in segments if s.crc is not None}


class PinotController(AsyncResource):
    """The subset of the Pinot controller API used for backup and restore."""

    @abc.abstractmethod
    async def health(self) -> None:
        """Return when the controller reports GOOD; ``Unavailable`` with its status otherwise."""

    @abc.abstractmethod
    async def instances(self) -> ClusterInstances:
        """Every registered instance and which of them are live (two reads, not atomic: an
        instance registered in between shows as registered and not live)."""

    @abc.abstractmethod
    async def ingestion_status(self, table: TableRef) -> IngestionStatus:
        """The controller's verdict on ``table``'s ingestion (``/tables/{t}/status``); it asks
        every server of the consuming segments. ``Unavailable`` for an OFFLINE table without a
        ``SegmentGenerationAndPushTask`` or a missing table too: Pinot answers both with 500."""

    @abc.abstractmethod
    async def list_tables(self, table_type: TableType | None = None) -> list[TableRef]:
        """Every physical table (of ``table_type`` when given), sorted by name then type."""

    @abc.abstractmethod
    async def table_configs(
        self, table: str, table_type: TableType | None = None
    ) -> dict[TableType, JsonObject]:
        """The full table config of each existing type of ``table``; ``NotFound`` if none.

        The configs are returned as the controller serialized them, to be stored and posted
        back unchanged by :meth:`create_table`.
        """

    @abc.abstractmethod
    async def table_schema(self, table: str) -> JsonObject:
        """The schema used by ``table`` (found by its raw name); ``NotFound`` if none."""

    @abc.abstractmethod
    async def schema(self, name: str) -> JsonObject:
        """The schema called ``name``; ``NotFound`` if there is none."""

    @abc.abstractmethod
    async def create_schema(
        self, schema: JsonObject, *, override: bool = True, force: bool = False
    ) -> None:
        """Store ``schema``. An equal schema is a no-op; a compatible one replaces it unless
        ``override=False`` (then ``Conflict``); an incompatible one needs ``force=True``
        (else ``RequestRejected``)."""

    @abc.abstractmethod
    async def create_table(self, config: JsonObject) -> TableRef:
        """Create the table of ``config`` (its schema must exist first). ``Conflict`` when the
        table exists; ``RequestRejected`` when Pinot refuses the config. A new REALTIME table
        starts consuming at once: pause it before restoring segments into it."""

    @abc.abstractmethod
    async def segments(self, table: TableRef) -> list[SegmentMetadata]:
        """ZK metadata of every segment of ``table`` (consuming ones included), any order.

        One request on controllers >= 1.0 (``/zkmetadata``); older ones are asked segment by
        segment. ``NotFound`` when the table does not exist.
        """

    async def segment_crcs(self, table: TableRef) -> dict[str, str]:
        """Name -> CRC (decimal) of every segment of ``table`` that has one; ``NotFound`` when
        the table does not exist. What a rehydration plan sets against the backup: read from
        :meth:`segments` here, without building each segment's metadata where a client can."""
        return crcs_of(await self.segments(table))

    @abc.abstractmethod
    async def segment_names(self, table: TableRef) -> list[str]:
        """Names of every segment of ``table`` in its ideal state (consuming ones included),
        any order; ``NotFound`` when the table does not exist. About 40 bytes a segment where
        :meth:`segments` costs 600: what a poll for new segments reads every time."""

    @abc.abstractmethod
    async def segment(self, table: TableRef, segment: str) -> SegmentMetadata:
        """ZK metadata of one segment; ``NotFound`` if the table or segment does not exist."""

    @abc.abstractmethod
    def download_segment(
        self, table: TableRef | str, segment: str
    ) -> AbstractAsyncContextManager[SegmentDownload]:
        """Open a streamed download of a segment's tarball (the deep-store bytes, unchanged).

        ``NotFound`` (on entering the context, before any byte) when the segment or its file is
        gone. The typed suffix of ``table`` is dropped: the controller serves by raw name.
        """

    @abc.abstractmethod
    async def upload_segment(
        self,
        table: TableRef,
        body: UploadBody,
        *,
        segment_name: str,
        allow_refresh: bool = True,
        if_match_crc: int | None = None,
    ) -> UploadResult:
        """Push a segment tarball (``UPLOAD_TYPE=SEGMENT``) from a stream, memory bounded.

        The controller reads the segment's name and CRC from the tarball itself;
        ``segment_name`` only names the multipart part. A new segment is added ONLINE (status
        UPLOADED on REALTIME tables; LLC names need start/end offsets in their metadata).
        An existing one is refreshed when its CRC differs, and only its times are updated
        when it is the same. ``allow_refresh=False`` turns an existing segment into
        ``Conflict``; ``if_match_crc`` makes the refresh conditional (``PreconditionFailed``).
        ``RequestRejected`` for a missing table or a bad tarball, ``PermissionDenied`` when the
        segment's time range is refused.
        """

    @abc.abstractmethod
    async def pause_consumption(self, table: str, *, comment: str | None = None) -> PauseStatus:
        """Set the pause flag and force-commit the consuming segments (asynchronously: poll
        :meth:`pause_status` until ``is_flushed``). ``NotFound`` for a non-REALTIME table."""

    @abc.abstractmethod
    async def resume_consumption(
        self,
        table: str,
        *,
        consume_from: ConsumeFrom | None = None,
        comment: str | None = None,
    ) -> PauseStatus:
        """Clear the pause flag; the controller then creates, per partition, a consuming
        segment after the latest one (sequence + 1), starting at its end offset
        (``LAST_CONSUMED``, the default) or at the stream's smallest/largest offset.
        After a restore this is what continues ingestion where the restored segments end."""

    @abc.abstractmethod
    async def pause_status(self, table: str) -> PauseStatus:
        """The pause flag and the segments still consuming."""

    @abc.abstractmethod
    async def consuming_segments(self, table: str) -> ConsumingSegmentsInfo:
        """What the servers report about each consuming segment (offsets, lag)."""

    @abc.abstractmethod
    async def consumer_watermarks(self, table: str) -> list[Watermark]:
        """Per partition, the sequence number and offset consumption continues from (1.5+)."""

    @abc.abstractmethod
    async def delete_segment(self, table: TableRef, segment: str) -> None:
        """Delete one segment (``DELETE /segments/{tableNameWithType}/{segment}``): used to
        drop the sequence-0 segments a restored REALTIME table's creation committed, so they
        are not counted twice. ``NotFound`` when the table or segment does not exist."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the controller client cannot be used afterwards."""

    async def backup_ready_segments(self, table: TableRef) -> list[SegmentMetadata]:
        """The segments of ``table`` that are complete and can be copied now (sorted by name)."""
        ready = [s for s in await self.segments(table) if s.is_backup_ready]
        return sorted(ready, key=lambda s: s.name)
