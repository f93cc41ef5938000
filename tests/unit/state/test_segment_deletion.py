"""Deleted segments in the catalog: live until their entry, forgotten at their purge, and the
two-consecutive-polls rule that decides when a deletion entry is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

from az_agent.agent.backup.deletions import DeletionWatch
from az_agent.state import (
    Catalog,
    LogEntry,
    Payload,
    SegmentDeletedPayload,
    SegmentsPurgedPayload,
)
from tests.unit.state.helpers import segment

ZONE = "az1"
TABLE = "metrics_OFFLINE"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


class History:
    """Applies payloads to a catalog as entries one minute apart."""

    def __init__(self) -> None:
        self.catalog = Catalog(ZONE)
        self._seq = count(1)

    def add(self, payload: Payload) -> LogEntry:
        seq = next(self._seq)
        entry = LogEntry(
            seq=seq,
            epoch=1,
            writer="w",
            nonce=str(seq),
            time=T0 + timedelta(minutes=seq),
            payload=payload,
        )
        assert self.catalog.apply(entry)
        return entry


def names(catalog: Catalog, as_of: datetime | None = None) -> list[str]:
    return sorted(r.name for r in catalog.segments(as_of))


def test_a_deleted_segment_is_live_before_its_entry_and_not_at_or_after() -> None:
    history = History()
    for name in ("a", "b"):
        history.add(segment(ZONE, name))
    deleted = history.add(SegmentDeletedPayload(table=TABLE, segment="a", crc="1234"))
    catalog = history.catalog
    assert names(catalog, deleted.time - timedelta(seconds=1)) == ["a", "b"]
    assert names(catalog, deleted.time) == ["b"]
    assert names(catalog) == ["b"]
    assert catalog.segment(TABLE, "a") is None
    assert catalog.segment(TABLE, "a", deleted.time - timedelta(seconds=1)) is not None
    assert catalog.segment_count == 1
    # Until purged its object stays referenced (the orphan sweep must not take it).
    assert catalog.references(segment(ZONE, "a").key)
    assert [d.name for d in catalog.deletions()] == ["a"]


def test_purge_forgets_every_version_but_not_a_segment_backed_up_again() -> None:
    history = History()
    history.add(segment(ZONE, "a", crc="1"))
    history.add(segment(ZONE, "a", crc="2"))
    history.add(segment(ZONE, "b"))
    history.add(SegmentDeletedPayload(table=TABLE, segment="a"))
    history.add(SegmentDeletedPayload(table=TABLE, segment="b"))
    history.add(segment(ZONE, "b"))  # Pinot has it again: live again
    history.add(SegmentsPurgedPayload(segments=[(TABLE, "a"), (TABLE, "b")]))
    catalog = history.catalog
    assert names(catalog) == ["b"]
    assert names(catalog, T0) == []
    assert not catalog.references(segment(ZONE, "a", crc="1").key)
    assert not catalog.references(segment(ZONE, "a", crc="2").key)
    assert catalog.references(segment(ZONE, "b").key)
    assert catalog.deletions() == []


def test_checkpoint_rows_keep_deletions() -> None:
    history = History()
    history.add(segment(ZONE, "a"))
    history.add(SegmentDeletedPayload(table=TABLE, segment="a"))
    rows = list(history.catalog.rows())
    restored = Catalog(ZONE)
    for row in rows:
        restored.apply_row(row)
    restored.finish_restore()
    assert list(restored.rows()) == rows
    assert names(restored) == []
    assert [d.name for d in restored.deletions()] == ["a"]


def test_an_absence_counts_only_on_two_consecutive_successful_looks() -> None:
    history = History()
    for name in ("a", "b"):
        history.add(segment(ZONE, name))
    watch, catalog = DeletionWatch(), history.catalog
    watch.saw_tables([TABLE], catalog)
    watch.saw_table(TABLE, ["b"], catalog)  # first look without "a"
    assert watch.confirmed == 0
    watch.table_failed(TABLE)  # a failed listing is not an absence, and breaks the run
    watch.saw_table(TABLE, ["b"], catalog)
    assert watch.confirmed == 0
    watch.saw_table(TABLE, ["b"], catalog)
    assert watch.confirmed == 1


def test_a_table_absent_from_two_consecutive_lists_loses_its_segments() -> None:
    history = History()
    for name in ("a", "b"):
        history.add(segment(ZONE, name))
    watch, catalog = DeletionWatch(), history.catalog
    watch.saw_tables([], catalog)
    watch.list_failed()  # a failed list proves nothing and starts over
    watch.saw_tables([], catalog)
    assert watch.confirmed == 0
    watch.saw_tables([], catalog)
    assert watch.confirmed == 2


def test_a_segment_revived_with_the_same_crc_survives_a_checkpoint() -> None:
    history = History()
    history.add(segment(ZONE, "a"))
    deleted = history.add(SegmentDeletedPayload(table=TABLE, segment="a"))
    revived = history.add(segment(ZONE, "a"))  # the same bytes back in Pinot
    rows = list(history.catalog.rows())
    restored = Catalog(ZONE)
    for row in rows:
        restored.apply_row(row)
    restored.finish_restore()
    assert list(restored.rows()) == rows
    record = restored.segment(TABLE, "a")
    assert record is not None
    assert record.committed_at == revived.time
    assert restored.segment(TABLE, "a", deleted.time - timedelta(seconds=1)) is not None
