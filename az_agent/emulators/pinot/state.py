"""What the emulated cluster remembers, and how it survives a restart.

The controller keeps its state in ZooKeeper (table configs, schemas, segment ZK metadata, ideal
states) and its segment files in the deep store. Here that is one JSON document,
``<data>/state.json``, rewritten atomically after every change, and one file per segment under
``<data>/deepstore/<rawTable>/<URL-encoded segment>`` (the controller's own layout).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from az_agent.drivers.pinot.segments import LLCSegmentName

JsonObject = dict[str, Any]
SERVER = "Server_127.0.0.1_8098"
"""The one fake server instance every replica is assigned to."""

ONLINE, CONSUMING, OFFLINE = "ONLINE", "CONSUMING", "OFFLINE"


def now_ms() -> int:
    return int(time.time() * 1000)


def java_timestamp(ms: int) -> str:
    """``java.sql.Timestamp.toString()`` in local time: trailing zeros of the fraction trimmed."""
    local = datetime.fromtimestamp(ms / 1000, UTC).astimezone()
    fraction = f"{ms % 1000:03d}".rstrip("0") or "0"
    return f"{local:%Y-%m-%d %H:%M:%S}.{fraction}"


@dataclass
class SegmentRecord:
    """ZK simple fields of one segment and its ideal-state state (one replica)."""

    zk: dict[str, str]
    state: str


@dataclass
class PauseRecord:
    """The ideal state's ``pauseState`` simple field."""

    paused: bool
    reason_code: str
    comment: str | None
    timestamp: str


@dataclass
class GeneratorSpec:
    """Produce committed segments of about ``size_bytes`` at ``rate_per_min``."""

    rate_per_min: float
    size_bytes: int


@dataclass
class TableRecord:
    name: str
    config: JsonObject
    segments: dict[str, SegmentRecord] = field(default_factory=dict)
    pause: PauseRecord | None = None
    generator: GeneratorSpec | None = None
    generated: int = 0

    @property
    def type(self) -> str:
        return "REALTIME" if self.name.endswith("_REALTIME") else "OFFLINE"

    @property
    def raw(self) -> str:
        return self.name.rsplit("_", 1)[0]

    @property
    def is_paused(self) -> bool:
        return self.pause is not None and self.pause.paused

    def consuming(self) -> list[str]:
        return sorted(n for n, s in self.segments.items() if s.state == CONSUMING)

    def latest_per_partition(self) -> dict[int, tuple[LLCSegmentName, SegmentRecord]]:
        """The highest sequence number of each partition among LLC-named segments."""
        latest: dict[int, tuple[LLCSegmentName, SegmentRecord]] = {}
        for name, record in self.segments.items():
            llc = LLCSegmentName.parse(name)
            if llc is None:
                continue
            current = latest.get(llc.partition)
            if current is None or (llc.sequence, llc.created) > (
                current[0].sequence,
                current[0].created,
            ):
                latest[llc.partition] = (llc, record)
        return latest


@dataclass
class ClusterState:
    schemas: dict[str, JsonObject] = field(default_factory=dict)
    tables: dict[str, TableRecord] = field(default_factory=dict)
    topics: dict[str, list[int]] = field(default_factory=dict)
    """Stream topics: the latest offset ("largest") of each partition."""

    def to_json(self) -> JsonObject:
        return {
            "schemas": self.schemas,
            "topics": self.topics,
            "tables": {name: _table_to_json(t) for name, t in self.tables.items()},
        }

    @classmethod
    def from_json(cls, body: JsonObject) -> ClusterState:
        return cls(
            schemas=dict(body.get("schemas", {})),
            topics={k: list(v) for k, v in body.get("topics", {}).items()},
            tables={n: _table_from_json(n, t) for n, t in body.get("tables", {}).items()},
        )


def _table_to_json(table: TableRecord) -> JsonObject:
    return {
        "config": table.config,
        "segments": {n: {"zk": s.zk, "state": s.state} for n, s in table.segments.items()},
        "pause": vars(table.pause) if table.pause else None,
        "generator": vars(table.generator) if table.generator else None,
        "generated": table.generated,
    }


def _table_from_json(name: str, body: JsonObject) -> TableRecord:
    pause = body.get("pause")
    generator = body.get("generator")
    return TableRecord(
        name=name,
        config=body["config"],
        segments={n: SegmentRecord(dict(s["zk"]), s["state"]) for n, s in body["segments"].items()},
        pause=PauseRecord(**pause) if pause else None,
        generator=GeneratorSpec(**generator) if generator else None,
        generated=int(body.get("generated", 0)),
    )


class Store:
    """The data directory: ``state.json``, the deep store and a scratch area."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.deep_store = root / "deepstore"
        self.scratch = root / "tmp"
        self._state_file = root / "state.json"
        self._save_lock = asyncio.Lock()
        self._write_lock = threading.Lock()
        self._changes = 0  # saves asked for: each after a change of the state
        self._saved = 0  # the changes the state file holds

    def prepare(self) -> ClusterState:
        """Create the directories and load the saved state (blocking: call from a thread)."""
        self.deep_store.mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        for leftover in self.scratch.iterdir():
            leftover.unlink(missing_ok=True)
        if not self._state_file.exists():
            return ClusterState()
        return ClusterState.from_json(json.loads(self._state_file.read_text(encoding="utf-8")))

    def blob(self, raw_table: str, segment: str) -> Path:
        return self.deep_store / raw_table / quote(segment, safe="")

    def scratch_file(self, hint: str) -> Path:
        return self.scratch / f"{hint}.{os.getpid()}.{time.monotonic_ns()}"

    async def save(self, state: ClusterState) -> None:
        """Write the state atomically; when this returns, the file holds every change made
        before the call. Concurrent saves are written together (group commit): a save that
        waited while another wrote finds its changes written by the next one, or writes them
        itself, and the whole state is not serialized once per change."""
        self._changes += 1
        mine = self._changes
        async with self._save_lock:
            if self._saved >= mine:
                return
            covered = self._changes
            text = json.dumps(state.to_json(), separators=(",", ":"))
            await asyncio.to_thread(self._write, text)
            self._saved = covered

    def _write(self, text: str) -> None:
        # A save whose task was cancelled still finishes in its thread: writes queue here.
        with self._write_lock:
            tmp = self._state_file.with_suffix(".json.tmp")
            with tmp.open("w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._state_file)
