"""An activation's rehydration progress: ``done`` never exceeds ``total``, resumed or not."""

from __future__ import annotations

from az_agent.agent.operations.journal import Progress


def counts(progress: Progress) -> tuple[int, int, int, int]:
    return (
        progress.segments_done,
        progress.segments_total,
        progress.bytes_done,
        progress.bytes_total,
    )


def test_the_first_plan_fixes_the_totals_and_done_stops_at_them() -> None:
    progress = Progress()
    progress.plan(4, 400)
    progress.advance(3, 300)
    assert counts(progress) == (3, 4, 300, 400)
    progress.advance(2, 200)  # a segment counted twice (moved again after a retry)
    assert counts(progress) == (4, 4, 400, 400)


def test_a_resumed_plan_counts_what_it_no_longer_needs_as_done() -> None:
    saved = Progress.model_validate_json(
        '{"segments_total": 10, "segments_done": 2, "bytes_total": 1000, "bytes_done": 200}'
    )  # as journaled before the crash: behind what was really moved
    saved.plan(5, 500)  # after the restart, five remain
    assert counts(saved) == (5, 10, 500, 1000)
    saved.advance(5, 500)
    assert counts(saved) == (10, 10, 1000, 1000)


def test_a_resumed_plan_larger_than_the_first_never_goes_below_zero_or_above_total() -> None:
    saved = Progress(segments_total=3, segments_done=3, bytes_total=300, bytes_done=300)
    saved.plan(5, 500)  # segments lost from Pinot since: more to move than the first plan had
    assert counts(saved) == (0, 3, 0, 300)
    saved.advance(5, 500)
    assert counts(saved) == (3, 3, 300, 300)
