"""The drill's findings: per phase what the new zone lacks (RPO) and how long it took (RTO).

One :class:`DrillReport` is both the JSON document (``az-agent drill --json``) and the table a
human reads; the verdict is computed from the same fields, so the two never disagree. Nothing
lost means: every segment committed in the old zone is in the new one with the same CRC, and
every database compared has the same rows in every table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class SegmentCheck:
    """Committed segments of the old zone's Pinot against the new zone's, by name and CRC."""

    committed: int = 0
    present: int = 0
    missing: list[str] = field(default_factory=list)
    crc_mismatches: list[str] = field(default_factory=list)
    bytes_missing: int = 0

    @property
    def lost(self) -> bool:
        return bool(self.missing or self.crc_mismatches)


@dataclass
class DatabaseCheck:
    """One database: per table row count and checksum, old zone against new."""

    database: str
    identical: bool
    tables: int
    rows: int
    differences: list[str] = field(default_factory=list)


@dataclass
class Step:
    """One part of the recovery time: the pause, the wait for the lease, an activation phase."""

    name: str
    seconds: float | None
    detail: str = ""


@dataclass
class PhaseReport:
    name: str
    source: str
    target: str
    ok: bool = False
    error: str | None = None
    segments: SegmentCheck | None = None
    databases: list[DatabaseCheck] | None = None
    """None when PostgreSQL was left out of the drill."""
    dump_age_seconds: float | None = None
    """Age of the newest dump the new zone could restore, at the moment of the failure."""
    rto_seconds: float | None = None
    steps: list[Step] = field(default_factory=list)

    @property
    def lost(self) -> bool:
        if self.segments is None or self.segments.lost:
            return True
        return any(not db.identical for db in self.databases or [])

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["nothing_lost"] = self.ok and not self.lost
        camel: dict[str, Any] = _camel(document)
        return camel


@dataclass
class DrillReport:
    options: dict[str, Any]
    postgres: str
    phases: list[PhaseReport] = field(default_factory=list)
    duration_seconds: float = 0.0
    interrupted: str | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return (
            self.interrupted is None
            and self.error is None
            and len(self.phases) == 3
            and all(p.ok and not p.lost for p in self.phases)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "PASS" if self.passed else "FAIL",
            "nothingLost": self.passed,
            "options": self.options,
            "postgres": self.postgres,
            "phases": [p.to_json() for p in self.phases],
            "durationSeconds": round(self.duration_seconds, 3),
            "interrupted": self.interrupted,
            "error": self.error,
        }

    def render(self, console: Console) -> None:
        table = Table(title="az-agent drill: RPO and RTO per phase", title_justify="left")
        for column in ("phase", "zones", "segments", "databases", "RPO", "RTO", "result"):
            table.add_column(column, justify="right" if column == "RTO" else "left")
        for phase in self.phases:
            table.add_row(
                phase.name,
                f"{phase.source} -> {phase.target}",
                _segments_cell(phase.segments),
                _databases_cell(phase.databases),
                _rpo_cell(phase),
                _seconds(phase.rto_seconds),
                "ok" if phase.ok and not phase.lost else "FAILED",
            )
        console.print(table)
        console.print(self._steps_table())
        for phase in self.phases:
            if phase.error:
                console.print(f"{phase.name}: {phase.error}", highlight=False)
            for db in phase.databases or []:
                for difference in db.differences:
                    console.print(f"{phase.name}: {db.database}: {difference}", highlight=False)
            if phase.segments and phase.segments.lost:
                lost = phase.segments.missing + phase.segments.crc_mismatches
                console.print(f"{phase.name}: lost {', '.join(lost[:10])}", highlight=False)
        console.print(f"postgres: {self.postgres}", highlight=False)
        if self.interrupted:
            console.print(f"interrupted: {self.interrupted}", highlight=False)
        if self.error:
            console.print(f"error: {self.error}", highlight=False)
        verdict = "PASS: nothing was lost" if self.passed else "FAIL"
        console.print(
            f"verdict: {verdict} ({len(self.phases)}/3 phases, {_seconds(self.duration_seconds)})",
            highlight=False,
        )

    def _steps_table(self) -> Table:
        """RTO by step: the pause or the wait for the lease, then each activation phase."""
        table = Table(title="RTO by step", title_justify="left")
        table.add_column("step")
        names: list[str] = []
        for phase in self.phases:
            table.add_column(phase.name, justify="right")
            names += [s.name for s in phase.steps if s.name not in names]
        for name in names:
            cells = []
            for phase in self.phases:
                found = [s.seconds for s in phase.steps if s.name == name]
                cells.append(_seconds(found[0]) if found else "")
            table.add_row(name, *cells)
        table.add_row("total (failure to ACTIVE)", *(_seconds(p.rto_seconds) for p in self.phases))
        return table


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _segments_cell(check: SegmentCheck | None) -> str:
    if check is None:
        return "-"
    cell = f"{check.present}/{check.committed} same CRC"
    if check.crc_mismatches:
        cell += f", {len(check.crc_mismatches)} CRC differ"
    return cell


def _databases_cell(checks: list[DatabaseCheck] | None) -> str:
    if checks is None:
        return "skipped"
    same = sum(db.identical for db in checks)
    rows = sum(db.rows for db in checks)
    return f"{same}/{len(checks)} identical ({rows} rows)"


def _rpo_cell(phase: PhaseReport) -> str:
    if phase.segments is None:
        return "-"
    lost = len(phase.segments.missing) + len(phase.segments.crc_mismatches)
    cell = f"{lost} segments lost"
    if phase.dump_age_seconds is not None:
        cell += f"; dump {_seconds(phase.dump_age_seconds)} old"
    return cell


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel_key(k): _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    if isinstance(value, float):
        return round(value, 3)
    return value


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


__all__ = ["DatabaseCheck", "DrillReport", "PhaseReport", "SegmentCheck", "Step"]
