"""Query-parameter parsing: every bad value becomes a 400 naming the parameter."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from multidict import MultiMapping

from az_agent.agent.errors import InvalidParameter

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NUMBER = re.compile(r"^\d+(\.\d+)?$", re.ASCII)
MILLIS_THRESHOLD = 100_000_000_000
"""Unix times above this are milliseconds: as seconds it would be the year 5138."""


MAX_BATCH_SIZE = 1000
"""Largest ``batchSize`` of ``/activate``: a batch's segments are planned and tracked at once."""
MAX_WAIT_SECONDS = 3600
"""Longest ``wait`` of ``/pause``: past an hour, follow the operation in ``/status``."""


def reject_unknown(query: MultiMapping[str], allowed: Iterable[str]) -> None:
    """400 for the first parameter not in ``allowed`` (typos must not be silently ignored) or
    given more than once (which of two values was meant cannot be guessed)."""
    known = set(allowed)
    for name in query:
        if name not in known:
            raise InvalidParameter(name, f"unknown parameter (allowed: {', '.join(sorted(known))})")
        if len(query.getall(name)) > 1:
            raise InvalidParameter(name, "given more than once; give it once")


def parse_bool(name: str, value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidParameter(name, f"expected true or false, got {value!r}")


def parse_positive_int(name: str, value: str | None, maximum: int | None = None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.lstrip("+-").isdigit() or len(text) > 20:
        raise InvalidParameter(name, f"expected a positive integer, got {value[:40]!r}")
    number = int(text)
    if number <= 0:
        raise InvalidParameter(name, f"must be positive, got {number}")
    if maximum is not None and number > maximum:
        raise InvalidParameter(name, f"must be at most {maximum}, got {number}")
    return number


def parse_past_timestamp(name: str, value: str | None, now: datetime) -> datetime | None:
    """:func:`parse_timestamp`, refusing a time after ``now`` (nothing was committed there)."""
    parsed = parse_timestamp(name, value)
    if parsed is not None and parsed > now:
        raise InvalidParameter(
            name, f"{parsed.isoformat()} is in the future (now is {now.isoformat()})"
        )
    return parsed


def parse_timestamp(name: str, value: str | None) -> datetime | None:
    """RFC 3339 (with a zone), or Unix seconds, or Unix milliseconds; always UTC-aware."""
    if value is None:
        return None
    text = value.strip()
    if _NUMBER.match(text):
        number = float(text)
        seconds = number / 1000 if number >= MILLIS_THRESHOLD else number
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidParameter(name, f"{value!r} is out of range") from None
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise InvalidParameter(
            name, f"expected RFC 3339 (2026-11-22T03:00:00Z) or Unix seconds/ms, got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidParameter(name, f"{value!r} has no time zone; add Z or an offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidParameter(name, f"{value!r} is out of range") from None
