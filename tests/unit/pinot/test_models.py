"""Typed views of controller answers, error mapping, credentials and settings."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import SecretStr

from az_agent.drivers.errors import (
    Misconfigured,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from az_agent.drivers.pinot import (
    Conflict,
    ConsumingSegmentsInfo,
    PauseStatus,
    PinotCredentials,
    PinotSettings,
    RequestRejected,
    SegmentMetadata,
    SegmentStatus,
    TableRef,
    TableType,
    is_backup_ready,
)
from az_agent.drivers.pinot.errors import controller_message, error_for_status
from az_agent.drivers.pinot.models import raw_table_name, table_type_of

REALTIME = TableRef("myTable", TableType.REALTIME)
OFFLINE = TableRef("myTable", TableType.OFFLINE)

# The three examples of §2 of the reference, verbatim.
OFFLINE_ZK = {
    "segment.crc": "992603588",
    "segment.creation.time": "1714608000123",
    "segment.download.url": "http://pinot-controller:9000/segments/myTable/myTable_1714521600000_1714607999000_0",
    "segment.end.time": "1714607999000",
    "segment.end.time.raw": "1714607999000",
    "segment.index.version": "v3",
    "segment.push.time": "1714608100456",
    "segment.size.in.bytes": "5242880",
    "segment.start.time": "1714521600000",
    "segment.start.time.raw": "1714521600000",
    "segment.time.unit": "MILLISECONDS",
    "segment.total.docs": "500109",
}
COMMITTED_ZK = {
    "segment.creation.time": "1714563000000",
    "segment.crc": "3618839852",
    "segment.data.crc": "2271830915",
    "segment.download.url": "s3://bucket/pinot/myTable/myTable__0__11__20240501T1130Z",
    "segment.end.time": "1714566599000",
    "segment.start.time": "1714563000000",
    "segment.time.unit": "MILLISECONDS",
    "segment.index.version": "v3",
    "segment.flush.threshold.size": "100000",
    "segment.realtime.numReplicas": "2",
    "segment.realtime.startOffset": "1100000",
    "segment.realtime.endOffset": "1200000",
    "segment.realtime.status": "DONE",
    "segment.size.in.bytes": "52428800",
    "segment.total.docs": "100000",
    "segment.use.data.crc": "true",
}
CONSUMING_ZK = {
    "segment.creation.time": "1714566600000",
    "segment.flush.threshold.size": "100000",
    "segment.realtime.numReplicas": "2",
    "segment.realtime.startOffset": "1200000",
    "segment.realtime.status": "IN_PROGRESS",
}


def test_offline_segment() -> None:
    name = "myTable_1714521600000_1714607999000_0"
    segment = SegmentMetadata.from_zk(OFFLINE, name, OFFLINE_ZK)
    assert segment.status is SegmentStatus.UPLOADED  # absent status means UPLOADED
    assert segment.crc == 992_603_588
    assert segment.data_crc is None
    assert (segment.start_time_ms, segment.end_time_ms) == (1_714_521_600_000, 1_714_607_999_000)
    assert segment.size_bytes == 5_242_880
    assert segment.total_docs == 500_109
    assert segment.completed_at_ms == 1_714_608_100_456
    assert segment.llc_name is None
    assert segment.is_backup_ready


def test_committed_and_consuming_realtime_segments() -> None:
    done = SegmentMetadata.from_zk(REALTIME, "myTable__0__11__20240501T1130Z", COMMITTED_ZK)
    assert done.status is SegmentStatus.DONE
    assert (done.crc, done.data_crc) == (3_618_839_852, 2_271_830_915)
    assert (done.start_offset, done.end_offset) == ("1100000", "1200000")
    assert done.llc_name is not None
    assert (done.llc_name.partition, done.llc_name.sequence) == (0, 11)
    assert is_backup_ready(done)
    consuming = SegmentMetadata.from_zk(REALTIME, "myTable__0__12__20240501T1230Z", CONSUMING_ZK)
    assert consuming.status is SegmentStatus.IN_PROGRESS
    assert consuming.crc is None
    assert consuming.end_offset is None
    assert not consuming.is_backup_ready


@pytest.mark.parametrize(
    ("change", "ready"),
    [
        ({}, True),
        ({"segment.download.url": ""}, False),  # only on peer servers
        ({"segment.download.url": None}, False),
        ({"segment.crc": None}, False),
        ({"segment.crc": "-1"}, False),
        ({"segment.realtime.status": "COMMITTING"}, False),  # pauseless, not yet durable
        ({"segment.realtime.status": "UPLOADED"}, True),
        ({"segment.realtime.status": "SOMETHING_NEW"}, False),
    ],
)
def test_backup_readiness(change: dict[str, str | None], ready: bool) -> None:
    fields = {k: v for k, v in (COMMITTED_ZK | change).items() if v is not None}
    assert SegmentMetadata.from_zk(REALTIME, "s", fields).is_backup_ready is ready


def test_legacy_download_url_and_time_units() -> None:
    fields = {
        "segment.crc": "1",
        "segment.offline.download.url": "http://c/segments/t/s",
        "segment.start.time": "19844",
        "segment.end.time": "19845",
        "segment.time.unit": "DAYS",
        "custom.map": {"k": "v"},
    }
    segment = SegmentMetadata.from_zk(OFFLINE, "s", fields)
    assert segment.download_url == "http://c/segments/t/s"
    assert segment.start_time_ms == 19_844 * 86_400_000
    assert json.loads(segment.raw["custom.map"]) == {"k": "v"}


def test_table_names() -> None:
    assert TableRef.parse("myTable_OFFLINE") == OFFLINE
    assert TableRef.parse("myTable", TableType.REALTIME) == REALTIME
    assert REALTIME.name_with_type == str(REALTIME) == "myTable_REALTIME"
    with pytest.raises(ValueError, match="does not match"):
        TableRef.parse("myTable_OFFLINE", TableType.REALTIME)
    with pytest.raises(ValueError, match="no type suffix"):
        TableRef.parse("myTable")
    assert raw_table_name("my_table_REALTIME") == "my_table"
    assert table_type_of("my_table") is None


def test_pause_status_shapes() -> None:
    new = PauseStatus.from_json(
        {
            "pauseFlag": True,
            "consumingSegments": ["b", "a"],
            "reasonCode": "ADMINISTRATIVE",
            "comment": "Table is paused.",
            "timestamp": "2024-05-01 12:35:10.123",
        }
    )
    assert new.consuming_segments == ("a", "b")
    assert not new.is_flushed
    old = PauseStatus.from_json({"pauseFlag": True, "consumingSegments": []})  # <= 1.2
    assert old.is_flushed
    assert old.reason_code is None
    assert PauseStatus.from_json({"pauseFlag": True, "description": "x"}).comment == "x"


def test_consuming_segments_info_reference_example() -> None:
    body = {
        "_segmentToConsumingInfoMap": {
            "myTable__0__12__20240501T1230Z": [
                {
                    "serverName": "Server_10.0.0.5_8098",
                    "consumerState": "CONSUMING",
                    "lastConsumedTimestamp": 1714567890123,
                    "partitionToOffsetMap": {"0": "1204512"},
                    "partitionOffsetInfo": {
                        "currentOffsetsMap": {"0": "1204512"},
                        "latestUpstreamOffsetMap": {"0": "1204515"},
                        "recordsLagMap": {"0": "3"},
                        "availabilityLagMsMap": {"0": "120"},
                    },
                }
            ],
            "myTable__1__12__20240501T1230Z": [],
        },
        "serversFailingToRespond": 0,
        "serversUnparsableRespond": 0,
    }
    info = ConsumingSegmentsInfo.from_json(body)
    [consumer] = info.segments["myTable__0__12__20240501T1230Z"]
    assert consumer.current_offsets == {"0": "1204512"}
    assert consumer.records_lag == {"0": "3"}
    assert info.segments["myTable__1__12__20240501T1230Z"] == ()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, RequestRejected),
        (401, Misconfigured),
        (403, PermissionDenied),
        (404, NotFound),
        (409, Conflict),
        (410, NotFound),
        (412, PreconditionFailed),
        (415, RequestRejected),
        (429, Unavailable),
        (500, Unavailable),
        (503, Unavailable),
    ],
)
def test_status_mapping(status: int, kind: type[Exception]) -> None:
    error = error_for_status(status, "GET /x", "because")
    assert type(error) is kind
    assert str(error).startswith(f"GET /x: HTTP {status}: because")


def test_conflict_is_a_precondition_and_rejection_a_misconfiguration() -> None:
    assert issubclass(Conflict, PreconditionFailed)
    assert issubclass(RequestRejected, Misconfigured)


def test_controller_message() -> None:
    assert controller_message(b'{"code":404,"error":"Table x not found"}') == "Table x not found"
    assert controller_message(b"Pinot controller status is STARTING") == (
        "Pinot controller status is STARTING"
    )
    assert controller_message(b'["not", "an", "error"]') == '["not", "an", "error"]'
    assert len(controller_message(b"x" * 10_000)) == 2000


def test_credentials_headers() -> None:
    basic = PinotCredentials(username=SecretStr("admin"), password=SecretStr("verysecret"))
    assert basic.authorization() == "Basic " + base64.b64encode(b"admin:verysecret").decode()
    assert PinotCredentials(token=SecretStr("abc")).authorization() == "Bearer abc"
    assert PinotCredentials(token=SecretStr("Basic YWJj")).authorization() == "Basic YWJj"
    assert PinotCredentials(username=SecretStr("admin")).authorization() is None
    assert "verysecret" not in repr(basic)


def test_settings_keys_and_defaults() -> None:
    settings = PinotSettings.model_validate(
        {"controllerUrl": "https://c:9443", "authSecret": "pinot", "caFile": "/ca.pem"}
    )
    assert settings.tls_verify
    assert settings.timeout_seconds == 30.0
    assert settings.tables == []
    assert (settings.auth_secret, settings.ca_file) == ("pinot", "/ca.pem")
    with pytest.raises(ValueError, match=r"timeout_?[sS]econds"):
        PinotSettings.model_validate({"timeoutSeconds": 0})
