"""Tables the emulator creates at start-up (``--seed-tables name:REALTIME:partitions,...``).

A seeded table gets a small telemetry-like schema and a Kafka-style table config, created
through the same path as ``POST /schemas`` and ``POST /tables``, so it is indistinguishable from
a table an operator created. Seeding an existing table only (re)applies the generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from az_agent.drivers.pinot.segments import CreationMeta
from az_agent.emulators.pinot.cluster import Cluster
from az_agent.emulators.pinot.state import (
    ONLINE,
    GeneratorSpec,
    JsonObject,
    SegmentRecord,
    TableRecord,
    now_ms,
)
from az_agent.emulators.pinot.tables import create_table
from az_agent.emulators.pinot.zkmeta import SegmentFacts, uploaded_zk

_DECODER = "org.apache.pinot.plugin.stream.kafka.KafkaJSONMessageDecoder"


@dataclass(frozen=True, slots=True)
class SeedTable:
    name: str
    type: str = "REALTIME"
    partitions: int = 2

    @classmethod
    def parse(cls, text: str) -> SeedTable:
        """``name[:OFFLINE|REALTIME[:partitions]]``; ``ValueError`` on anything else."""
        parts = text.strip().split(":")
        if not parts[0] or len(parts) > 3:
            raise ValueError(f"bad seed table {text!r}: expected name[:TYPE[:partitions]]")
        kind = parts[1].upper() if len(parts) > 1 else "REALTIME"
        if kind not in ("OFFLINE", "REALTIME"):
            raise ValueError(f"bad seed table {text!r}: type must be OFFLINE or REALTIME")
        partitions = int(parts[2]) if len(parts) > 2 else 2
        if partitions < 1:
            raise ValueError(f"bad seed table {text!r}: partitions must be >= 1")
        return cls(parts[0], kind, partitions)


def seed_schema(name: str) -> JsonObject:
    return {
        "schemaName": name,
        "dimensionFieldSpecs": [
            {"name": "service", "dataType": "STRING"},
            {"name": "host", "dataType": "STRING"},
        ],
        "metricFieldSpecs": [{"name": "value", "dataType": "DOUBLE"}],
        "dateTimeFieldSpecs": [
            {
                "name": "ts",
                "dataType": "LONG",
                "format": "1:MILLISECONDS:EPOCH",
                "granularity": "1:MILLISECONDS",
            }
        ],
    }


def seed_config(name: str, kind: str) -> JsonObject:
    config: JsonObject = {
        "tableName": name,
        "tableType": kind,
        "segmentsConfig": {"timeColumnName": "ts", "replication": "1"},
        "tenants": {},
        "tableIndexConfig": {"loadMode": "MMAP"},
        "metadata": {},
    }
    if kind == "REALTIME":
        config["ingestionConfig"] = {
            "streamIngestionConfig": {
                "streamConfigMaps": [
                    {
                        "streamType": "kafka",
                        "stream.kafka.topic.name": name,
                        "stream.kafka.broker.list": "kafka:9092",
                        "stream.kafka.consumer.type": "lowlevel",
                        "stream.kafka.decoder.class.name": _DECODER,
                        "stream.kafka.consumer.prop.auto.offset.reset": "smallest",
                        "realtime.segment.flush.threshold.rows": "100000",
                    }
                ]
            }
        }
    return config


async def seed_table(cluster: Cluster, seed: SeedTable, generator: GeneratorSpec | None) -> None:
    typed = f"{seed.name}_{seed.type}"
    if typed not in cluster.state.tables:
        async with cluster.lock:
            cluster.state.schemas.setdefault(seed.name, seed_schema(seed.name))
            cluster.state.topics.setdefault(seed.name, [0] * seed.partitions)
        await create_table(cluster, json.dumps(seed_config(seed.name, seed.type)))
    if generator is not None:
        async with cluster.lock:
            cluster.set_generator(cluster.state.tables[typed], generator)
        await cluster.save()


HISTORY_SPAN_MS = 3_600_000
"""Each history segment covers an hour, the newest ending an hour before it was added."""


def add_history(cluster: Cluster, table: TableRecord, count: int) -> list[str]:
    """Add ``count`` pushed segments as a long-running cluster holds them: ZK metadata and an
    ONLINE ideal-state entry each, written as an upload writes them, but no deep-store file (a
    download answers 404, as when the deep store lost it). 100,000 take seconds, where building
    their tarballs would take an hour: enough to measure discovery, not copies. Call under the
    cluster lock. REALTIME tables get uploaded-realtime names (``uploaded__{table}__{partition}
    __{time}__{n}``), which no consuming partition's sequence can collide with."""
    now = now_ms()
    partitions = max(1, len(cluster.topic_of(table))) if table.type == "REALTIME" else 1
    first = len(table.segments)
    names: list[str] = []
    for index in range(first, first + count):
        end = now - HISTORY_SPAN_MS * (first + count - index)
        name = _history_name(table, index, index % partitions, end)
        facts = SegmentFacts(
            properties={
                "segment.start.time": str(end - HISTORY_SPAN_MS),
                "segment.end.time": str(end),
                "segment.time.unit": "MILLISECONDS",
                "segment.total.docs": "100000",
                "segment.index.version": "v3",
            },
            meta=CreationMeta(1_000_000 + index, end),
            download_url=cluster.download_url(table.raw, name),
            size_bytes=50 << 20,
        )
        zk = uploaded_zk(None, facts, realtime=table.type == "REALTIME", segment=name, now=end)
        table.segments[name] = SegmentRecord(zk, ONLINE)
        names.append(name)
    return names


def _history_name(table: TableRecord, index: int, partition: int, end_ms: int) -> str:
    if table.type == "OFFLINE":
        return f"{table.raw}_{end_ms - HISTORY_SPAN_MS}_{end_ms}_{index}"
    stamp = datetime.fromtimestamp(end_ms / 1000, UTC).strftime("%Y%m%dT%H%MZ")
    return f"uploaded__{table.raw}__{partition}__{stamp}__{index}"
