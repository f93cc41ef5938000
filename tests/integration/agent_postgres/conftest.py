"""The two PostgreSQL servers (one per zone) and helpers of ``tests/integration/postgres``."""

from __future__ import annotations

from tests.integration.postgres.conftest import dbname, pg_servers, zone1, zone2

__all__ = ["dbname", "pg_servers", "zone1", "zone2"]
