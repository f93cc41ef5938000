"""Shadow database names within PostgreSQL's 63 bytes, and the label a shadow carries."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from az_agent.drivers.postgres.base import PgVersion, ShadowLabel
from az_agent.drivers.postgres.config import MAX_NAME_BYTES
from az_agent.drivers.postgres.dumper import decode_label, encode_label, shadow_name


def test_short_names_get_the_plain_suffix() -> None:
    assert shadow_name("configdb") == "configdb__az_shadow"


@pytest.mark.parametrize("base", ["d" * 63, "d" * 52, "é" * 31, "x" * 40 + "ü" * 11])
def test_long_names_are_cut_hashed_and_stay_distinct(base: str) -> None:
    name = shadow_name(base)
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.endswith("__az_shadow")
    name.encode().decode()  # never a split character
    assert shadow_name(base[:-1] + "z") != name  # same cut, different hash


def test_labels_round_trip_and_anything_else_is_no_label() -> None:
    label = ShadowLabel(
        key="az1/postgres/db/20261204T000000Z-0a1b2c3d.dump",
        sha256="ab" * 32,
        size=1234,
        restored_at=datetime(2026, 12, 4, tzinfo=UTC),
        pg_restore_version=PgVersion(150018, "15.18"),
        tables=3,
        rows=42,
        rows_exact=True,
        objects={"tables": 3},
    )
    assert decode_label(encode_label(label)) == label
    tagged = replace(label, swapped_in_by="activate-1")
    assert decode_label(encode_label(tagged)) == tagged
    for text in (
        None,
        "",
        "a comment an operator wrote",
        "az-agent shadow {not json",
        "az-agent shadow {}",
        "az-agent shadow []",
    ):
        assert decode_label(text) is None
