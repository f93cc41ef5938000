"""The Pinot controller: the interface the agent uses, its HTTP client, and segment helpers."""

from az_agent.drivers.pinot.auth import PinotCredentials, read_pinot_credentials
from az_agent.drivers.pinot.base import (
    ConsumeFrom,
    PinotController,
    SegmentDownload,
    SizedStream,
    UploadBody,
)
from az_agent.drivers.pinot.config import PinotSettings
from az_agent.drivers.pinot.errors import Conflict, RequestRejected
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.pinot.models import (
    ClusterInstances,
    ConsumerInfo,
    ConsumingSegmentsInfo,
    IngestionState,
    IngestionStatus,
    InstanceKind,
    PauseStatus,
    SegmentMetadata,
    SegmentStatus,
    TableRef,
    TableType,
    UploadResult,
    Watermark,
    is_backup_ready,
)

__all__ = [
    "ClusterInstances",
    "Conflict",
    "ConsumeFrom",
    "ConsumerInfo",
    "ConsumingSegmentsInfo",
    "HttpPinotController",
    "IngestionState",
    "IngestionStatus",
    "InstanceKind",
    "PauseStatus",
    "PinotController",
    "PinotCredentials",
    "PinotSettings",
    "RequestRejected",
    "SegmentDownload",
    "SegmentMetadata",
    "SegmentStatus",
    "SizedStream",
    "TableRef",
    "TableType",
    "UploadBody",
    "UploadResult",
    "Watermark",
    "is_backup_ready",
    "read_pinot_credentials",
]
