"""Pieces of the emulator that stand alone: generated segments and Jackson's pretty printing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from az_agent.drivers.pinot.tarstream import TarballInspector
from az_agent.emulators.pinot.common import pretty_json
from az_agent.emulators.pinot.factory import SegmentPlan, build_segment, metadata_properties
from az_agent.emulators.pinot.tables import normalized_schema
from tests.integration.pinot.support import untar_and_check

PLAN = SegmentPlan(
    name="events__1__4__20240501T1130Z",
    raw_table="events",
    size_bytes=300_000,
    seed=42,
    creation_time_ms=1_714_563_000_000,
    start_time_ms=1_714_560_000_000,
    end_time_ms=1_714_563_000_000,
    total_docs=1000,
    start_offset="4000",
    end_offset="5000",
)


def test_generated_segment_is_deterministic_and_its_crc_true(tmp_path: Path) -> None:
    first, second = tmp_path / "a.tgz", tmp_path / "b.tgz"
    built = build_segment(PLAN, first)
    assert build_segment(PLAN, second) == built
    assert first.read_bytes() == second.read_bytes()
    assert abs(built.size_bytes - PLAN.size_bytes) < 12 << 10

    crc, created, data_crc, recomputed = untar_and_check(first, tmp_path / "x")
    assert crc == recomputed == built.crc
    assert created == PLAN.creation_time_ms
    assert data_crc == built.data_crc

    reseeded = build_segment(dataclasses.replace(PLAN, seed=43), tmp_path / "c.tgz")
    assert reseeded.crc != built.crc


def test_generated_metadata_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "s.tgz"
    build_segment(PLAN, path)
    inspector = TarballInspector()
    inspector.feed(path.read_bytes())
    info = inspector.finish()
    assert info.properties == metadata_properties(PLAN)
    assert info.properties["segment.realtime.endOffset"] == "5000"
    assert info.index_dir == PLAN.name


def test_schema_pretty_form_matches_the_controller() -> None:
    schema = {
        "schemaName": "myTable",
        "dimensionFieldSpecs": [
            {"name": "country", "dataType": "STRING"},
            {"name": "userId", "dataType": "LONG"},
        ],
        "metricFieldSpecs": [{"name": "clicks", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [
            {
                "name": "ts",
                "dataType": "LONG",
                "format": "1:MILLISECONDS:EPOCH",
                "granularity": "1:MILLISECONDS",
            }
        ],
    }
    expected = """{
  "schemaName" : "myTable",
  "enableColumnBasedNullHandling" : false,
  "dimensionFieldSpecs" : [ {
    "name" : "country",
    "dataType" : "STRING",
    "fieldType" : "DIMENSION"
  }, {
    "name" : "userId",
    "dataType" : "LONG",
    "fieldType" : "DIMENSION"
  } ],
  "metricFieldSpecs" : [ {
    "name" : "clicks",
    "dataType" : "LONG",
    "fieldType" : "METRIC"
  } ],
  "dateTimeFieldSpecs" : [ {
    "name" : "ts",
    "dataType" : "LONG",
    "fieldType" : "DATE_TIME",
    "format" : "1:MILLISECONDS:EPOCH",
    "granularity" : "1:MILLISECONDS"
  } ]
}"""
    assert pretty_json(normalized_schema(schema)) == expected
    assert pretty_json({"a": [], "b": {}}) == '{\n  "a" : [ ],\n  "b" : { }\n}'
