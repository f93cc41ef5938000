"""``/activate?dryRun=true``: a preview an operator takes before touching production.

While the source is live, while the group's primary is another zone, and in a state that
refuses activation, the dry run still answers 200 with the plan, says what the real call would
get (``wouldBeRefused``), and writes nothing anywhere: the whole bucket is listed before and
after, keys and versions.
"""

from __future__ import annotations

from typing import Any

from az_agent.agent.operations.states import AgentState, Request
from az_agent.state import LeaseKeeper, LeaseSettings, PrimaryLock
from tests.e2e.conftest import (
    REALTIME_TABLE,
    TABLE,
    Zone,
    bucket_listing,
    call,
    dumped,
    leads,
    open_bucket,
    wait_for,
    without_health,
)

LIVE = LeaseSettings(ttl_seconds=3600, renew_deadline_seconds=3000, retry_period_seconds=1)
"""A lease nobody renews during the test, yet live all along it (judged on az2's clock)."""


async def _backed_up(zone: Zone) -> bool:
    segments = (await call("GET", f"{zone.url}/status"))["backups"]["segments"]
    return bool(segments["segmentsBackedUp"] >= 2 and segments["pending"] == 0)


def _assert_plan(body: dict[str, Any]) -> None:
    assert body["dryRun"] is True
    assert body["segments"]["toMove"] >= 2, body
    assert body["segments"]["bytesToMove"] > 0
    assert set(body["postgres"]["dumps"]) == {"configdb", "orchestratordb"}
    assert body["tablesToCreate"] == [f"{TABLE}_REALTIME"]
    assert body["estimatedSeconds"] >= 0


async def test_a_dry_run_previews_every_refusal_and_writes_nothing(
    stack: tuple[Zone, Zone],
) -> None:
    one, two = stack
    await one.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await one.pinot.cluster.commit_consuming(REALTIME_TABLE)
    await wait_for(lambda: dumped(one), "zone 1's first dumps")
    await wait_for(lambda: _backed_up(one), "zone 1's segments in the bucket")
    await one.stop()  # its backups stay; its lease is released

    async with open_bucket(one.config) as store:
        # Zone 1 looks live (a holder took its lease and nobody renews it within the test).
        await LeaseKeeper(store, "az1", "az1-agent-still-running", LIVE).take_over()
        await two.start()
        before = await bucket_listing(store)

        body = await call("POST", f"{two.url}/activate?zone=az1&dryRun=true", expect=200)
        _assert_plan(body)
        refused = body["wouldBeRefused"]
        assert refused["status"] == 409, refused
        assert "is live" in refused["reason"]
        assert "az1-agent-still-running" in refused["reason"]
        assert refused["state"] == "STANDBY"

        real = await call("POST", f"{two.url}/activate?zone=az1", expect=409)
        assert real["detail"].split(" changed ")[0] == refused["reason"].split(" changed ")[0]

        assert two.agent is not None
        two.agent.set_state(Request.ACTIVATE)  # as if an activation were running
        body = await call("POST", f"{two.url}/activate?zone=az1&dryRun=true", expect=200)
        _assert_plan(body)
        assert body["wouldBeRefused"]["status"] == 409
        assert body["wouldBeRefused"]["reason"] == "cannot activate while ACTIVATING"
        two.agent.set_state(Request.FAIL)
        assert two.agent.state is AgentState.FAILED

        after = await bucket_listing(store)
        assert without_health(after) == without_health(before), "a dry run wrote to the bucket"

        # Another zone is the group's primary: with force, that is what the preview names.
        await PrimaryLock(store).claim(source="az1", zone="az3", operation_id="by-the-test")
        before = await bucket_listing(store)
        body = await call("POST", f"{two.url}/activate?zone=az1&force=true&dryRun=true", expect=200)
        _assert_plan(body)
        refused = body["wouldBeRefused"]
        assert refused["status"] == 409, refused
        assert "not the primary" in refused["reason"]
        assert refused["primaryZone"] == "az3"
        after = await bucket_listing(store)
        assert without_health(after) == without_health(before), "a dry run wrote to the bucket"
        status = await call("GET", f"{two.url}/status")
        assert status["operation"] is None, "a dry run journals no operation"
