"""Automatic failover: the standby activates by itself once the source zone falls silent.

The rule (judged on this agent's clock, as lease expiry always is): the source zone's lease has
not changed for its TTL plus ``graceSeconds``. A paused source is a planned handshake in
progress and is left to the operator. The activation itself is the operator's: this loop only
decides, then calls ``activate(source)``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from az_agent.agent.config import AutomaticFailoverSettings
from az_agent.drivers.errors import DriverError
from az_agent.state import Clock, LeaseKeeper, LeaseObservation, LeaseState, StateError

log = logging.getLogger(__name__)


def source_is_gone(observation: LeaseObservation, grace_seconds: float) -> bool:
    """True when the source's lease is live-looking (not paused) but silent past TTL + grace."""
    record = observation.record
    if record is None or record.state is LeaseState.PAUSED:
        return False
    return observation.seconds_unchanged >= record.ttl_seconds + grace_seconds


async def watch_source(
    settings: AutomaticFailoverSettings,
    keeper: LeaseKeeper,
    clock: Clock,
    period: float,
    *,
    is_standby: Callable[[], bool],
    activate: Callable[[str], Awaitable[None]],
) -> None:
    """While this agent is a standby, watch the source's lease and activate once it is gone."""
    while True:
        await clock.sleep(period)
        if not is_standby():
            continue
        try:
            observation = await keeper.observe()
        except (DriverError, StateError) as exc:
            log.warning("automatic failover: cannot read zone %s's lease: %s", keeper.zone, exc)
            continue
        if not source_is_gone(observation, settings.grace_seconds):
            continue
        assert observation.record is not None
        log.warning(
            "zone %s's lease (holder %s) has not changed for %.0fs: automatic failover",
            keeper.zone,
            observation.record.holder,
            observation.seconds_unchanged,
        )
        await activate(settings.source_zone)
