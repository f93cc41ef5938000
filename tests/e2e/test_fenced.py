"""A live active agent whose zone is taken with force: it stops writing and does not fight back."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import (
    REALTIME_TABLE,
    LeaseReads,
    Zone,
    activation_done,
    bucket_listing,
    call,
    dumped,
    leads,
    open_bucket,
    prometheus,
    wait_for,
)


async def _state(zone: Zone) -> str:
    return str((await call("GET", f"{zone.url}/status"))["state"])


async def _fenced(zone: Zone) -> dict[str, Any] | None:
    status = await call("GET", f"{zone.url}/status")
    return status if status["state"] == "FENCED" else None


async def test_live_agent_fenced_by_a_forced_activation(
    stack: tuple[Zone, Zone], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = stack
    await one.start()
    await two.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await one.pinot.cluster.commit_consuming(REALTIME_TABLE)
    await wait_for(lambda: dumped(one), "zone 1's first dumps")

    await call("POST", f"{two.url}/activate?zone=az1&force=true", expect=202)
    await wait_for(lambda: activation_done(two.url), "zone 2 to activate")
    status = await wait_for(lambda: _fenced(one), "zone 1 to notice it was fenced")
    assert status["leader"] is False
    assert status["fencedBy"]
    assert (await prometheus(one))["az_agent_fenced"] == 1

    assert one.agent is not None
    reads = LeaseReads(one.agent.keeper, monkeypatch)
    async with open_bucket(one.config) as store:
        before = await bucket_listing(store, "az1/")
        # Zone 1's Pinot keeps producing; its agent must neither copy nor commit anything.
        await one.pinot.cluster.commit_consuming(REALTIME_TABLE)
        await reads.wait(4, "four lease rounds of the fenced agent")
        after = await bucket_listing(store, "az1/")
    assert after == before, "a fenced agent writes nothing to its zone"
    assert await _state(one) == "FENCED"
    assert (await call("GET", f"{one.url}/status"))["lease"]["holder"] != one.agent.holder
    body = await call("POST", f"{one.url}/pause", expect=409)
    assert body["state"] == "FENCED"
