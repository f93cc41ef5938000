"""Segment ZK metadata as the controller writes it (``SegmentZKMetadataUtils``, §6.3).

Three writers: a new consuming segment, a commit (``updateCommittingSegmentZKMetadata``) and an
upload, new or refresh (``updateSegmentZKMetadata`` without an end offset). Values are strings;
negative numbers are not stored, as ``setNonNegativeValue`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from az_agent.drivers.pinot.segments import CreationMeta, LLCSegmentName

_UNIT_MS = {
    "MILLISECONDS": 1,
    "SECONDS": 1000,
    "MINUTES": 60_000,
    "HOURS": 3_600_000,
    "DAYS": 86_400_000,
}


def _put(zk: dict[str, str], key: str, value: int | str | None) -> None:
    if value is None or (isinstance(value, int) and value < 0):
        zk.pop(key, None)
    else:
        zk[key] = str(value)


def consuming_zk(
    *, created_ms: int, start_offset: str, replicas: int, flush_rows: int
) -> dict[str, str]:
    return {
        "segment.creation.time": str(created_ms),
        "segment.flush.threshold.size": str(flush_rows),
        "segment.realtime.numReplicas": str(replicas),
        "segment.realtime.startOffset": start_offset,
        "segment.realtime.status": "IN_PROGRESS",
    }


@dataclass(frozen=True, slots=True)
class SegmentFacts:
    """What the controller learns from a segment's tarball and its deep-store copy."""

    properties: Mapping[str, str]
    meta: CreationMeta | None
    download_url: str
    size_bytes: int

    def interval_ms(self) -> tuple[int, int] | None:
        """``SegmentMetadataImpl.getTimeInterval``: needs start, end and unit, all three."""
        props = self.properties
        if not all(k in props for k in ("segment.start.time", "segment.end.time")):
            return None
        unit = props.get("segment.time.unit")
        if unit is None or unit.upper() not in _UNIT_MS:
            return None
        scale = _UNIT_MS[unit.upper()]
        return int(props["segment.start.time"]) * scale, int(props["segment.end.time"]) * scale


def _common(zk: dict[str, str], facts: SegmentFacts) -> None:
    _put(zk, "segment.index.version", facts.properties.get("segment.index.version", "v1"))
    _put(zk, "segment.total.docs", int(facts.properties.get("segment.total.docs", "-1")))
    _put(zk, "segment.crc", facts.meta.crc if facts.meta else None)
    _put(zk, "segment.data.crc", facts.meta.data_crc if facts.meta else None)
    _put(zk, "segment.download.url", facts.download_url)
    _put(zk, "segment.size.in.bytes", facts.size_bytes)


def committed_zk(
    zk: Mapping[str, str], facts: SegmentFacts, end_offset: str, now: int
) -> dict[str, str]:
    """A consuming segment's metadata after its commit."""
    out = dict(zk)
    out["segment.realtime.endOffset"] = end_offset
    out["segment.realtime.status"] = "DONE"
    if facts.meta is not None and facts.meta.data_crc is not None:
        out["segment.use.data.crc"] = "true"
    interval = facts.interval_ms() if int(facts.properties.get("segment.total.docs", "0")) else None
    start, end = interval if interval else (now, now)
    _put(out, "segment.start.time", start)
    _put(out, "segment.end.time", end)
    out["segment.time.unit"] = "MILLISECONDS"
    _common(out, facts)
    return out


class InvalidSegment(ValueError):
    """``Preconditions.checkArgument`` failing inside the ZK update (400 on upload)."""


def uploaded_zk(
    existing: Mapping[str, str] | None,
    facts: SegmentFacts,
    *,
    realtime: bool,
    segment: str,
    now: int,
) -> dict[str, str]:
    """Metadata of an uploaded segment; ``existing`` is the current one on a refresh."""
    out = dict(existing or {})
    out.pop("segment.use.data.crc", None)
    props = facts.properties
    if realtime:
        out["segment.realtime.status"] = "UPLOADED"
        has_offsets = (
            "segment.realtime.startOffset" in props and "segment.realtime.endOffset" in props
        )
        if existing is None and LLCSegmentName.parse(segment) is not None and not has_offsets:
            raise InvalidSegment(
                "New uploaded LLC segment must have start/end offset in the segment metadata"
            )
        for key in ("segment.realtime.startOffset", "segment.realtime.endOffset"):
            if key in props:
                out[key] = props[key]
    _put(out, "segment.creation.time", facts.meta.creation_time_ms if facts.meta else None)
    _put(out, "segment.refresh.time" if existing else "segment.push.time", now)
    interval = facts.interval_ms()
    if interval is not None:
        _put(out, "segment.start.time", interval[0])
        _put(out, "segment.end.time", interval[1])
        out["segment.time.unit"] = "MILLISECONDS"
        column = props.get("segment.time.column.name")
        low, high = props.get(f"column.{column}.minValue"), props.get(f"column.{column}.maxValue")
        if low is not None and high is not None:
            out["segment.start.time.raw"], out["segment.end.time.raw"] = low, high
    else:
        for key in ("segment.start.time", "segment.end.time", "segment.time.unit"):
            out.pop(key, None)
    _common(out, facts)
    return out


def same_crc_refresh(existing: Mapping[str, str], facts: SegmentFacts, now: int) -> dict[str, str]:
    """Same CRC: only the creation and refresh times (and the download URL) change."""
    out = dict(existing)
    _put(out, "segment.creation.time", facts.meta.creation_time_ms if facts.meta else None)
    _put(out, "segment.refresh.time", now)
    out["segment.download.url"] = facts.download_url
    return out
