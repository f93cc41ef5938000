"""Warm standby, PostgreSQL side: keep the newest dump of each database restored in a shadow.

Each follow step restores the source zone's newest committed dump of every database into
``<db>__az_shadow`` when the shadow does not hold it yet. What a shadow holds is recorded in
the shadow itself (its database comment, written before it takes the shadow's name), so a
restarted agent knows without restoring again, and a failed restore leaves the previous shadow
with its own label, or none. An activation then swaps the shadow in instead of restoring
(:func:`az_agent.agent.restore.postgres.restore_databases`), so it moves only what arrived
since the last follow step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from az_agent.drivers.postgres.base import PostgresDumper
from az_agent.drivers.storage.base import ObjectStore
from az_agent.state import Catalog

log = logging.getLogger(__name__)


class ShadowsBehind(Exception):
    """Some shadows could not be brought up to date; the others were (``held``).

    Each failed database keeps the shadow it had (if any), so the next step simply retries.
    The first failure is the ``__cause__``.
    """

    def __init__(self, held: Mapping[str, str], failures: Mapping[str, Exception]) -> None:
        reasons = "; ".join(f"{db}: {exc}" for db, exc in failures.items())
        super().__init__(f"shadow restore failed for {len(failures)} database(s): {reasons}")
        self.held = dict(held)
        self.failures = dict(failures)


async def follow_dumps(
    dumper: PostgresDumper, store: ObjectStore, catalog: Catalog, databases: list[str]
) -> dict[str, str]:
    """One follow step: ``{database: dump key its shadow holds}``, restoring where needed.

    A database without any committed dump keeps whatever shadow it has (reported if labelled);
    one whose newest dump is already in its shadow costs one query. A failure does not stop
    the other databases; it is raised afterwards as :class:`ShadowsBehind`.
    """
    held: dict[str, str] = {}
    failures: dict[str, Exception] = {}
    for database in databases:
        label = None
        try:
            label = await dumper.shadow(database)
            record = catalog.newest_dump(database)
            if record is None or (label is not None and label.holds(record.key, record.sha256)):
                if label is not None:
                    held[database] = label.key
                continue
            log.info(
                "restoring %s into its shadow from %s (log entry %d)",
                database,
                record.key,
                record.seq,
            )
            await dumper.restore_shadow(database, store, record.key, record.sha256, record.size)
            held[database] = record.key
        except Exception as exc:
            log.warning("shadow of %s not brought up to date: %s", database, exc)
            failures[database] = exc
            if label is not None:
                held[database] = label.key
    if failures:
        raise ShadowsBehind(held, failures) from next(iter(failures.values()))
    return held
