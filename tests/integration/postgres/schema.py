"""A small configuration-like schema to back up, and a snapshot of everything a restore must
bring back: table rows, catalog objects, index and view definitions, sequence positions."""

from __future__ import annotations

from typing import Any

import asyncpg

SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app.dashboards (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    body jsonb NOT NULL,
    created timestamptz NOT NULL DEFAULT '2026-01-01T00:00:00Z'
);
CREATE TABLE app.panels (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dashboard_id int NOT NULL REFERENCES app.dashboards (id) ON DELETE CASCADE,
    title text NOT NULL,
    position int NOT NULL
);
CREATE INDEX panels_by_dashboard ON app.panels (dashboard_id, position);
CREATE SEQUENCE app.ticket_seq START 1000 INCREMENT 5;
CREATE TABLE public.alerts (
    id serial PRIMARY KEY,
    rule text NOT NULL,
    severity text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    ticket bigint NOT NULL DEFAULT nextval('app.ticket_seq')
);
CREATE INDEX alerts_rule_lower ON public.alerts (lower(rule));
CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, message text NOT NULL);
CREATE VIEW app.dashboard_sizes AS
    SELECT d.name, count(p.id) AS panels
    FROM app.dashboards d LEFT JOIN app.panels p ON p.dashboard_id = d.id
    GROUP BY d.name;
CREATE FUNCTION app.severity_rank(s text) RETURNS int LANGUAGE sql IMMUTABLE
    AS $$ SELECT CASE s WHEN 'critical' THEN 3 WHEN 'warning' THEN 2 ELSE 1 END $$;
"""

DATA = """
INSERT INTO app.dashboards (name, body)
    SELECT 'dash-' || g || '-v' || $1::int, jsonb_build_object('g', g, 'v', $1::int)
    FROM generate_series(1, 500) g;
INSERT INTO app.panels (dashboard_id, title, position)
    SELECT 1 + g % 500, 'panel ' || g, g FROM generate_series(1, 3000) g;
INSERT INTO public.alerts (rule, severity)
    SELECT 'rule ' || g || ' v' || $1::int, (ARRAY['info', 'warning', 'critical'])[1 + g % 3]
    FROM generate_series(1, 1500) g;
INSERT INTO public.audit_log (message) SELECT 'event ' || g FROM generate_series(1, 2000) g;
"""

ROWS = 500 + 3000 + 1500 + 2000
TABLES = 4


async def seed(conn: asyncpg.Connection, variant: int = 1) -> None:
    """Create the schema and fill it; ``variant`` changes the contents, not the shape."""
    await conn.execute(SCHEMA)
    for statement in DATA.split(";"):
        if "$1" in statement:
            await conn.execute(statement, variant)
        elif statement.strip():
            await conn.execute(statement)


async def _rows(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    tables = await conn.fetch(
        """SELECT c.oid::regclass::text AS name FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'r' AND n.nspname IN ('app', 'public') ORDER BY 1"""
    )
    return {
        t["name"]: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t['name']} ORDER BY 1")]
        for t in tables
    }


CATALOG_QUERIES = {
    "relations": """SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('app', 'public') ORDER BY 1, 2""",
    "indexes": "SELECT schemaname, indexname, indexdef FROM pg_indexes "
    "WHERE schemaname IN ('app', 'public') ORDER BY 1, 2",
    "views": "SELECT schemaname, viewname, definition FROM pg_views "
    "WHERE schemaname IN ('app', 'public') ORDER BY 1, 2",
    "sequences": "SELECT schemaname, sequencename, start_value, increment_by, last_value "
    "FROM pg_sequences WHERE schemaname IN ('app', 'public') ORDER BY 1, 2",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace::regnamespace::text IN ('app', 'public')
        ORDER BY 1, 2""",
    "functions": """SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
        WHERE p.pronamespace::regnamespace::text = 'app' ORDER BY 1""",
}


async def snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    """Everything compared between a source database and its restored copy."""
    shot: dict[str, Any] = {"rows": await _rows(conn)}
    for name, query in CATALOG_QUERIES.items():
        shot[name] = [tuple(r) for r in await conn.fetch(query)]
    return shot
