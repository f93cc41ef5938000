"""When a segment became complete, as the recovery point counts it (pure logic, no servers)."""

from __future__ import annotations

from az_agent.agent.backup.segments import completed_at_ms
from az_agent.drivers.pinot import SegmentMetadata, TableRef, TableType

SEEN = 1_800_000_000_000
REALTIME = TableRef("events", TableType.REALTIME)
OFFLINE = TableRef("logs", TableType.OFFLINE)


def meta(table: TableRef, **fields: str) -> SegmentMetadata:
    base = {"segment.crc": "1", "segment.download.url": "http://c/segments/x/y"}
    return SegmentMetadata.from_zk(table, "seg", base | fields)


def test_a_push_or_refresh_counts_from_its_own_time() -> None:
    pushed = meta(OFFLINE, **{"segment.push.time": str(SEEN - 5000)})
    assert completed_at_ms(pushed, SEEN) == SEEN - 5000
    refreshed = meta(
        OFFLINE,
        **{"segment.push.time": str(SEEN - 9000), "segment.refresh.time": str(SEEN - 2000)},
    )
    assert completed_at_ms(refreshed, SEEN) == SEEN - 2000
    uploaded_realtime = meta(
        REALTIME,
        **{"segment.realtime.status": "UPLOADED", "segment.push.time": str(SEEN - 700)},
    )
    assert completed_at_ms(uploaded_realtime, SEEN) == SEEN - 700


def test_a_commit_counts_from_its_newest_row_not_from_when_it_started_consuming() -> None:
    committed = meta(
        REALTIME,
        **{
            "segment.realtime.status": "DONE",
            "segment.creation.time": str(SEEN - 3_600_000),  # consuming started an hour ago
            "segment.end.time": str(SEEN - 1500),
            "segment.time.unit": "MILLISECONDS",
        },
    )
    assert completed_at_ms(committed, SEEN) == SEEN - 1500


def test_never_later_than_first_seen() -> None:
    future_rows = meta(
        REALTIME,
        **{
            "segment.realtime.status": "DONE",
            "segment.end.time": str(SEEN + 60_000),
            "segment.time.unit": "MILLISECONDS",
        },
    )
    assert completed_at_ms(future_rows, SEEN) == SEEN
    nothing_known = meta(REALTIME, **{"segment.realtime.status": "DONE"})
    assert completed_at_ms(nothing_known, SEEN) == SEEN
