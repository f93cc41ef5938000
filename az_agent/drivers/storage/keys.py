"""Object key rules shared by every backend, so a key valid on one is valid on all."""

from __future__ import annotations

import re

_SEGMENT = re.compile(r"^[A-Za-z0-9._=+@,:-]+$")
MAX_KEY_LENGTH = 900  # S3 allows 1024 bytes, Azure 1024 chars: leave room for the prefix


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative path on every backend, else raise ValueError."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"object key must be 1..{MAX_KEY_LENGTH} characters, got {len(key)}")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise ValueError(f"object key {key!r}: bad path element {segment!r}")
    return key


def join_key(*parts: str) -> str:
    """Join key parts with ``/``, dropping empty ones and stray slashes."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))
