"""The error tree every driver raises; vendor exceptions never leave ``drivers/``.

::

    DriverError
     +-- NotFound            the object, table, database or silence does not exist
     +-- PreconditionFailed  a conditional write lost its race (create-only or compare-and-swap)
     +-- PermissionDenied    credentials were accepted but lack the right
     +-- Misconfigured       the target cannot work as configured (missing bucket, bad credentials)
     +-- Unavailable         transient: throttling, 5xx, connection errors; safe to retry
     +-- CorruptObject       stored bytes do not match the checksum recorded when they were written

Drivers translate vendor errors into these in one place, chained with ``raise ... from exc``,
so callers and logs keep the original cause without depending on any SDK.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of every error a driver raises."""


class NotFound(DriverError):
    """The named thing does not exist."""


class PreconditionFailed(DriverError):
    """A conditional write lost: the key already exists (create-only) or its version moved (CAS).

    Azure answers a lost create-only race with 409 and the others with 412; both end up here.
    """


class PermissionDenied(DriverError):
    """The backend refused the operation for these credentials."""


class Misconfigured(DriverError):
    """The backend cannot work as configured; retrying will not help."""


class Unavailable(DriverError):
    """A transient failure (throttling, 5xx, connection); the operation may be retried."""


class CorruptObject(DriverError):
    """The bytes read back do not match the checksum recorded at write time."""
