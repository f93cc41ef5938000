"""Query parameters: every bad value is a 400 that names the parameter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from multidict import MultiDict

from az_agent.agent.errors import InvalidParameter
from az_agent.agent.http.params import (
    parse_bool,
    parse_positive_int,
    parse_timestamp,
    reject_unknown,
)

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    ["2026-11-22T12:00:00Z", "2026-11-22T13:00:00+01:00", "1795348800", "1795348800000"],
)
def test_latest_time_formats(text: str) -> None:
    assert parse_timestamp("latestTime", text) == NOON


def test_fractional_seconds() -> None:
    parsed = parse_timestamp("latestTime", "1795348800.5")
    assert parsed is not None
    assert parsed.timestamp() == 1795348800.5


@pytest.mark.parametrize(
    "text",
    ["yesterday", "2026-11-22T12:00:00", "2026-13-01T00:00:00Z", "", "\u0661\u0667\u0669\u0665"],
)
def test_bad_latest_time(text: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_timestamp("latestTime", text)
    assert caught.value.extra["parameter"] == "latestTime"


def test_batch_size_must_be_positive() -> None:
    assert parse_positive_int("batchSize", "50") == 50
    assert parse_positive_int("batchSize", None) is None
    for bad in ("0", "-3", "ten", "1.5"):
        with pytest.raises(InvalidParameter, match="batchSize"):
            parse_positive_int("batchSize", bad)


def test_bools_and_unknown_parameters() -> None:
    assert parse_bool("force", "true") is True
    assert parse_bool("force", None) is False
    assert parse_bool("force", "0") is False
    with pytest.raises(InvalidParameter, match="force"):
        parse_bool("force", "maybe")
    reject_unknown(MultiDict(zone="az1"), ["zone", "force"])
    with pytest.raises(InvalidParameter, match="zonee: unknown parameter"):
        reject_unknown(MultiDict(zonee="az1"), ["zone", "force"])
    with pytest.raises(InvalidParameter, match="zone: given more than once"):
        reject_unknown(MultiDict([("zone", "az1"), ("zone", "az1")]), ["zone", "force"])
