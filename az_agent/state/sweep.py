"""Removes orphans: data objects that no log entry references, left by fenced or crashed writers.

Nothing is part of a backup until its log entry exists, so an object without one is an upload
that never got committed. Young objects are kept (grace period) because a live writer may be
between its upload and its entry. The candidates are listed first and the catalog is brought up
to date afterwards, so an entry committed while the sweep lists cannot be missed. The lease,
the log and the checkpoints are never touched.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from az_agent.drivers.errors import PreconditionFailed
from az_agent.drivers.storage.base import ObjectInfo, ObjectStore
from az_agent.state.catalog import Catalog, refresh_catalog
from az_agent.state.clock import Clock
from az_agent.state.keys import DATA_AREAS, data_prefix

log = logging.getLogger(__name__)


async def sweep_orphans(
    store: ObjectStore, zone: str, catalog: Catalog, grace: timedelta, clock: Clock
) -> list[ObjectInfo]:
    """Delete unreferenced data objects older than ``grace``; return those removed.

    ``catalog`` is refreshed from the log in place. ``grace`` must exceed the longest time a
    writer may take between finishing an upload and committing its entry (hours, not seconds):
    object ages come from the store's clock, compared with this machine's wall clock.
    """
    if zone != catalog.zone:
        raise ValueError(f"catalog of zone {catalog.zone!r} cannot sweep zone {zone!r}")
    cutoff = clock.now() - grace
    candidates: list[ObjectInfo] = []
    for area in DATA_AREAS:
        async for info in store.list(data_prefix(zone, area)):
            if info.modified is None or info.modified > cutoff:
                continue  # too young, or age unknown: keep
            if not catalog.references(info.key):
                candidates.append(info)
    await refresh_catalog(store, catalog)
    removed: list[ObjectInfo] = []
    for info in candidates:
        if catalog.references(info.key):
            continue  # committed while we were listing
        try:
            await store.delete(info.key, if_match=info.version)
        except PreconditionFailed:
            continue  # rewritten since listed: someone is using that key again
        removed.append(info)
    log.info("zone %s: orphan sweep removed %d objects older than %s", zone, len(removed), grace)
    return removed
