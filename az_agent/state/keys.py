"""Where each piece of a zone's state lives in the bucket (see DESIGN.md, "Layout").

Everything but the pair's primary record (``primary/<group>.json``) is under ``<zone>/``.
Sequence numbers are zero-padded to 20 digits so that key order is log order on every backend.
"""

from __future__ import annotations

from az_agent.drivers.storage.keys import join_key, validate_key

SEQ_DIGITS = 20
LOG_SUFFIX = ".json"
CHECKPOINT_SUFFIX = ".jsonl.gz"
DATA_AREAS = ("segments", "postgres", "pinot")
"""Top-level folders of a zone that hold backup data (and may hold orphans)."""


def check_zone(zone: str) -> str:
    """Return ``zone`` if it is one valid key element (no ``/``), else raise ValueError."""
    if "/" in zone:
        raise ValueError(f"zone {zone!r} must not contain '/'")
    return validate_key(zone)


def check_group(group: str) -> str:
    """Return ``group`` if it is one valid key element (no ``/``), else raise ValueError."""
    if "/" in group:
        raise ValueError(f"failover group {group!r} must not contain '/'")
    return validate_key(group)


def primary_key(group: str) -> str:
    """The pair's primary record, ``primary/<group>.json`` (shared by both zones of a group)."""
    return join_key("primary", f"{check_group(group)}.json")


def lease_key(zone: str) -> str:
    return join_key(check_zone(zone), "lease.json")


def log_prefix(zone: str) -> str:
    return join_key(check_zone(zone), "log") + "/"


def log_key(zone: str, seq: int) -> str:
    if seq < 1:
        raise ValueError(f"log sequence numbers start at 1, got {seq}")
    return f"{log_prefix(zone)}{seq:0{SEQ_DIGITS}d}{LOG_SUFFIX}"


def checkpoint_prefix(zone: str) -> str:
    return join_key(check_zone(zone), "checkpoints") + "/"


def checkpoint_key(zone: str, seq: int) -> str:
    return f"{checkpoint_prefix(zone)}{seq:0{SEQ_DIGITS}d}{CHECKPOINT_SUFFIX}"


def parse_seq(key: str, prefix: str, suffix: str) -> int | None:
    """The sequence number in ``<prefix><seq><suffix>``, or None for any other key."""
    if not key.startswith(prefix) or not key.endswith(suffix):
        return None
    digits = key[len(prefix) : len(key) - len(suffix)]
    if len(digits) != SEQ_DIGITS or not digits.isdigit():
        return None
    return int(digits)


def data_prefix(zone: str, area: str) -> str:
    if area not in DATA_AREAS:
        raise ValueError(f"unknown data area {area!r}")
    return join_key(check_zone(zone), area) + "/"


def segment_key(zone: str, table: str, segment: str, crc: str) -> str:
    """Canonical key of a segment's tarball; one object per (table, segment, CRC)."""
    return validate_key(join_key(check_zone(zone), "segments", table, segment, f"{crc}.tar.gz"))


def dump_key(zone: str, database: str, stamp: str) -> str:
    """Key of a PostgreSQL dump; ``stamp`` is a UTC timestamp such as 20261122T033000Z."""
    return validate_key(join_key(check_zone(zone), "postgres", database, f"{stamp}.dump"))


def table_config_key(zone: str, table: str, digest: str) -> str:
    """``<zone>/pinot/tables/<table>/<sha256>.json``: named by content, so an entry's document
    never changes under it (older agents wrote ``<table>.json``; their entries still name it)."""
    return _document_key(zone, "tables", table, digest)


def schema_key(zone: str, schema: str, digest: str) -> str:
    """``<zone>/pinot/schemas/<schema>/<sha256>.json``, content-addressed like table configs."""
    return _document_key(zone, "schemas", schema, digest)


def _document_key(zone: str, folder: str, name: str, digest: str) -> str:
    if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
        raise ValueError(f"{digest!r} is not a lowercase hex SHA-256")
    return validate_key(join_key(check_zone(zone), "pinot", folder, name, f"{digest}.json"))


def health_key(zone: str) -> str:
    """The zone's published health, ``<zone>/health.json`` (written by its leader)."""
    return join_key(check_zone(zone), "health.json")


def workloads_key(zone: str) -> str:
    """The replicas of a cold zone's workloads while it was last active,
    ``<zone>/workloads.json`` (written by its leader, read when it scales up from zero)."""
    return join_key(check_zone(zone), "workloads.json")
