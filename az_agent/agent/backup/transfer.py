"""One segment from the controller to the bucket, then its log entry: the copy itself.

The segment streams through (at most two upload parts in memory; a segment of up to 24 MiB whole,
for one PUT, since the download says its size; on S3 a larger one goes through a temporary
file, so it is whole, checked and hashed before its upload starts); its ``creation.meta`` CRC is
checked against ZooKeeper's on the way, so a put only completes for the bytes Pinot committed.
An object already at its key (copied before a crash, before its entry) is adopted without a
second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import cast

from az_agent.agent.backup.discovery import Pending
from az_agent.agent.leadership.session import LeaderSession
from az_agent.drivers.errors import CorruptObject, NotFound
from az_agent.drivers.pinot.base import PinotController
from az_agent.drivers.pinot.tarstream import verified_segment_stream
from az_agent.drivers.storage.base import ObjectInfo, ObjectStore
from az_agent.drivers.storage.streams import SizedBody
from az_agent.state import SegmentPayload
from az_agent.state.keys import segment_key

log = logging.getLogger(__name__)


async def transfer_segment(
    session: LeaderSession,
    pinot: PinotController,
    slots: asyncio.Semaphore,
    item: Pending,
    now: datetime,
) -> SegmentPayload:
    """Copy ``item`` (holding one of ``slots`` while streaming) and commit its entry."""
    key = segment_key(session.zone, item.table.name_with_type, item.meta.name, item.crc)
    info = await _adoptable(session.store, key)
    if info is None:
        async with slots:
            info = await _stream(pinot, session.store, item, key)
    else:
        log.info("adopting %s: already in the bucket at %s", item.describe(), key)
    if info.sha256 is None:
        raise CorruptObject(f"{key}: the store did not report the SHA-256 it recorded")
    llc = item.meta.llc_name
    payload = SegmentPayload(
        table=item.table.name_with_type,
        table_type=item.table.type.value,
        segment=item.meta.name,
        crc=item.crc,
        size=info.size,
        sha256=info.sha256,
        key=key,
        start_time_ms=item.meta.start_time_ms,
        end_time_ms=item.meta.end_time_ms,
        commit_time_ms=item.completed_ms,
        backed_up_at=now,
        partition=llc.partition if llc else None,
        start_offset=item.meta.start_offset if llc else None,
        end_offset=item.meta.end_offset if llc else None,
    )
    await session.commit(payload)
    return payload


async def _stream(
    pinot: PinotController, store: ObjectStore, item: Pending, key: str
) -> ObjectInfo:
    async with pinot.download_segment(item.table, item.meta.name) as download:
        checked = cast(
            AsyncGenerator[bytes, None],
            verified_segment_stream(download, item.meta.crc, item.describe()),
        )
        async with contextlib.aclosing(checked) as stream:
            if download.length is None:
                return await store.put(key, stream)
            return await store.put(key, SizedBody(stream, download.length))


async def _adoptable(store: ObjectStore, key: str) -> ObjectInfo | None:
    """The object at ``key`` if a complete, checksummed copy is already there."""
    try:
        info = await store.head(key)
    except NotFound:
        return None
    return info if info.sha256 is not None and info.size > 0 else None
