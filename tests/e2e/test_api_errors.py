"""The real agent's answers to requests it must refuse, and the dry run that writes nothing."""

from __future__ import annotations

import pytest

from az_agent.agent.secrets import read_storage_secrets
from az_agent.drivers.storage.config import StorageSecrets
from az_agent.drivers.storage.factory import open_object_store
from tests.e2e.conftest import (
    REALTIME_TABLE,
    TABLE,
    LeaseReads,
    Zone,
    call,
    dumped,
    leads,
    wait_for,
)
from tests.servers.alertmanager import AlertmanagerServer


async def _bucket_keys(zone: Zone) -> list[tuple[str, str]]:
    store = await open_object_store(zone.config.storage, _secrets(zone))
    try:
        return [(i.key, i.version) async for i in store.list()]
    finally:
        await store.close()


def _secrets(zone: Zone) -> StorageSecrets | None:
    return read_storage_secrets(zone.config)


async def test_refusals_and_dry_run(stack: tuple[Zone, Zone]) -> None:
    one, two = stack
    await one.start()
    await two.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await one.pinot.cluster.commit_consuming(REALTIME_TABLE)

    # Wrong state: a standby has nothing to pause or resume; an active zone cannot activate.
    body = await call("POST", f"{two.url}/pause", expect=409)
    assert body["state"] == "STANDBY"
    body = await call("POST", f"{two.url}/resume", expect=409)
    assert body["state"] == "STANDBY"
    body = await call("POST", f"{one.url}/activate?zone=az2", expect=409)
    assert body["state"] == "ACTIVE"

    # Bad requests name the parameter; unknown zones are 404.
    body = await call("POST", f"{two.url}/activate?zone=az2", expect=400)
    assert body["parameter"] == "zone"
    body = await call("POST", f"{two.url}/activate?zone=nowhere", expect=404)
    assert "nowhere" in body["detail"]
    body = await call("POST", f"{two.url}/activate?zone=az1&batchSize=0", expect=400)
    assert body["parameter"] == "batchSize"

    # The source is alive: refused while its lease is live, with the holder named.
    body = await call("POST", f"{two.url}/activate?zone=az1", expect=409)
    assert "live" in body["detail"]
    assert body["retryAfterSeconds"] >= 0

    # No backup at or before a time long ago: 404 naming what is missing.
    body = await call(
        "POST",
        f"{two.url}/activate?zone=az1&force=true&latestTime=2001-01-01T00:00:00Z",
        expect=404,
    )
    assert "configdb" in body["detail"]

    # A dry run shows the plan and writes nothing, anywhere.
    await wait_for(lambda: dumped(one), "zone 1's first dumps")
    await wait_for(lambda: _segments_backed_up(one), "zone 1's segments in the bucket")
    before = await _bucket_keys(one)
    body = await call("POST", f"{two.url}/activate?zone=az1&force=true&dryRun=true", expect=200)
    assert body["dryRun"] is True
    assert body["segments"]["toMove"] >= 2, body
    assert body["segments"]["bytesToMove"] > 0
    assert set(body["postgres"]["dumps"]) == {"configdb", "orchestratordb"}
    assert body["tablesToCreate"] == [f"{TABLE}_REALTIME"]
    after = await _bucket_keys(one)
    changed = {k for k, v in after if (k, v) not in before and not k.startswith("az1/lease")}
    # The standby's replicas publish its health whatever the API answers; nothing else.
    assert not {k for k in changed if k.startswith("az2/") and k != "az2/health.json"}
    assert (await call("GET", f"{two.url}/status"))["state"] == "STANDBY"
    assert (await call("GET", f"{two.url}/status"))["operation"] is None


async def _segments_backed_up(zone: Zone) -> bool:
    segments = (await call("GET", f"{zone.url}/status"))["backups"]["segments"]
    return bool(segments["segmentsBackedUp"] >= 2 and segments["pending"] == 0)


async def test_pause_with_pinot_gone_fails_then_force_pauses(stack: tuple[Zone, Zone]) -> None:
    """The docs' escape hatch: when Pinot (or Kafka) is unreachable, pause?force=true."""
    one, _ = stack
    await one.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await wait_for(lambda: dumped(one), "zone 1's first dumps")
    await one.pinot.stop()

    body = await call("POST", f"{one.url}/pause", expect=503)
    assert body["error"] == "operation-failed"
    assert body["operation"]["status"] == "failed"
    assert body["operation"]["phase"] == "pause-consumption"
    status = await call("GET", f"{one.url}/status")
    assert status["state"] == "FAILED"
    assert status["leader"] is True, "a failed pause keeps the zone backed up"

    body = await call("POST", f"{one.url}/pause?force=true", expect=200)
    assert body["state"] == "PAUSED"
    phases = {p["name"]: p for p in body["operation"]["phases"]}
    assert phases["wait-committed"]["detail"] == "skipped (force)"
    assert phases["pause-consumption"]["detail"].startswith("skipped (force)")
    assert phases["final-dump"]["detail"] == "2 databases dumped"
    assert phases["release-lease"]["detail"] == "lease paused"
    status = await call("GET", f"{one.url}/status")
    assert status["lease"]["state"] == "paused"
    assert status["leader"] is False


async def test_paused_zone_nobody_took_over_resumes_in_place(
    stack: tuple[Zone, Zone], alertmanager: AlertmanagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _ = stack
    await one.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    epoch = (await call("GET", f"{one.url}/status"))["epoch"]
    body = await call("POST", f"{one.url}/pause", expect=200)
    assert body["state"] == "PAUSED"

    await one.stop()  # a restart: a new incarnation with a new holder id finds its zone paused
    await one.start()
    assert one.agent is not None
    reads = LeaseReads(one.agent.keeper, monkeypatch)
    for _ in range(4):  # several lease rounds: it must not mistake its own pause for a takeover
        status = await call("GET", f"{one.url}/status")
        assert status["state"] == "PAUSED"
        assert status["leader"] is False
        await reads.wait(1, "a lease round of the restarted agent")

    resumed = await call("POST", f"{one.url}/resume", expect=200)
    assert resumed["state"] == "ACTIVE"
    assert resumed["epoch"] > epoch
    assert resumed["tablesResumed"] == [TABLE]
    assert resumed["silencesLifted"], "the pause's silence is lifted after the restart too"
    await wait_for(lambda: leads(one), "zone 1 to lead again")
    controller = one.controller()
    try:
        assert (await controller.pause_status(TABLE)).paused is False
    finally:
        await controller.close()
