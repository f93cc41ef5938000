"""``/status`` and ``/readyz``: the human view of what the metrics count.

Scripts depend on these names: ``zone``, ``state``, ``leader``, ``leading``, ``epoch``,
``rpoSeconds`` (``segments``, ``postgres``) and ``operation`` (``id``, ``kind``, ``phase``,
``status``, ``progress``, ``error``; null when none has run).

``leader`` says the zone's lease is held; ``leading`` that its leader session runs (the fence
entry written and the catalog loaded; the backup loops run under it), which comes a moment later:
only then is anything being backed up.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from az_agent.drivers.errors import DriverError

if TYPE_CHECKING:
    from az_agent.agent.daemon import Agent


def build_status(agent: Agent) -> dict[str, Any]:
    deps = agent.deps
    lease = agent.keeper.status()
    database = deps.database_backup
    now = deps.clock.now()
    return {
        "zone": agent.zone,
        "state": agent.state.value,
        "allowedRequests": agent.allowed(),
        "leader": lease.is_leader,
        "leading": agent.session is not None,
        "epoch": lease.epoch or 0,
        "holder": agent.holder,
        "lease": {
            "holder": lease.record_holder,
            "epoch": lease.record_epoch,
            "state": lease.record_state.value if lease.record_state else None,
            "secondsSinceRenewal": _round(lease.seconds_since_renewal),
            "secondsUnchanged": _round(lease.seconds_unchanged),
            "acquiredAt": lease.acquired_at.isoformat() if lease.acquired_at else None,
        },
        "primary": _primary(agent),
        "fencedBy": agent.fenced_by,
        "rpoSeconds": {
            "segments": round(deps.segment_backup.rpo_seconds(), 3),
            "postgres": round(database.rpo_seconds(), 3) if database else None,
        },
        "backups": {
            "segments": deps.segment_backup.status(),
            "postgres": database.status() if database else {"enabled": False},
        },
        "alerts": {"silencing": deps.silences.enabled},
        "operation": agent.operation.describe(now) if agent.operation else None,
        "time": now.isoformat(),
    }


def _primary(agent: Agent) -> dict[str, Any] | None:
    """The failover group's primary zone and term, as this agent last read them."""
    observation = agent.leadership.primary
    record = observation.record if observation else None
    return {
        "group": agent.leadership.primary_lock.group,
        "zone": record.zone if record else None,
        "term": record.term if record else 0,
        "since": record.since.isoformat() if record else None,
        "isThisZone": record is not None and record.zone == agent.zone,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def check_dependencies(agent: Agent) -> tuple[bool, dict[str, Any]]:
    """Probe the bucket, Pinot and PostgreSQL concurrently; ready when all answer."""
    deps = agent.deps

    async def probe(name: str, check: Any) -> tuple[str, str | None]:
        try:
            await asyncio.wait_for(check(), timeout=5)
        except (DriverError, TimeoutError) as exc:
            return name, f"{type(exc).__name__}: {exc}"
        return name, None

    checks = [probe("bucket", deps.store.check), probe("pinot", deps.pinot.health)]
    if deps.dumper is not None:
        checks.append(probe("postgres", deps.dumper.ping))
    results = dict(await asyncio.gather(*checks))
    ok = all(error is None for error in results.values())
    return ok, {
        "ok": ok,
        "dependencies": {name: error or "ok" for name, error in results.items()},
    }
