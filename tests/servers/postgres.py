"""The throwaway PostgreSQL server the tests use: the sandbox's, so both stay one code path."""

from __future__ import annotations

from az_agent.sandbox.postgres import PASSWORD, PG_BIN, SUPERUSER, PostgresServer, free_port

__all__ = ["PASSWORD", "PG_BIN", "SUPERUSER", "PostgresServer", "free_port"]
