"""Tables the emulator creates at start-up (``--seed-tables name:REALTIME:partitions,...``).

A seeded table gets a small telemetry-like schema and a Kafka-style table config, created
through the same path as ``POST /schemas`` and ``POST /tables``, so it is indistinguishable from
a table an operator created. Seeding an existing table only (re)applies the generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from az_agent.emulators.pinot.cluster import Cluster
from az_agent.emulators.pinot.state import GeneratorSpec, JsonObject
from az_agent.emulators.pinot.tables import create_table

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
