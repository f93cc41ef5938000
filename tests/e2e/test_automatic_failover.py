"""Automatic mode: the standby runs the handshake itself once the active zone is gone or sick.

It acts on an expired lease, or on the source's published health saying ``unhealthy`` long
enough; never on a planned pause (lease ``paused``: the operator's handshake), never within the
cooldown of its last automatic activation, never back to a zone that took the primary from it
automatically, and never because of a bucket brownout shorter than the renew deadline.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from az_agent.agent.config import AgentConfig, parse_config
from az_agent.agent.operations.journal import Operation, OperationJournal
from az_agent.state import PrimaryRecord, SystemClock
from az_agent.state.keys import primary_key
from tests.conftest import BackendPool
from tests.e2e.conftest import (
    REALTIME_TABLE,
    AgentProcessFactory,
    Zone,
    activation_done,
    call,
    leads,
    open_bucket,
    prometheus,
    status_of,
    wait_for,
)
from tests.e2e.test_unplanned import COMMITS, assert_restored, backed_up_catalog, zone_one_dies
from tests.servers.flaky_proxy import Brownout


def automatic(config: AgentConfig, source: str, grace: float, **settings: float) -> AgentConfig:
    document: dict[str, Any] = config.model_dump(mode="json", by_alias=True)
    document["az-service"]["config"]["automaticFailover"] = {
        "enabled": True,
        "sourceZone": source,
        "graceSeconds": grace,
        **settings,
    }
    return parse_config(document, environ={})


async def test_standby_takes_over_a_dead_zone_by_itself(
    stack: tuple[Zone, Zone], agent_processes: AgentProcessFactory
) -> None:
    one, two = stack
    two.config = automatic(two.config, "az1", grace=1)
    old = agent_processes(one)
    await two.start()
    _, records = await zone_one_dies(one, old)
    killed_at = asyncio.get_running_loop().time()

    async def failed_over() -> dict[str, Any] | None:
        if (await status_of(two.url))["operation"] is None:
            return None  # not started yet
        return await activation_done(two.url)

    done = await wait_for(failed_over, "zone 2 to fail over by itself")
    waited = asyncio.get_running_loop().time() - killed_at
    assert waited >= one.config.service.lease.ttl_seconds, "it waited for the lease to expire"
    assert done["operation"]["request"]["zone"] == "az1"
    assert done["leader"] is True
    await assert_restored(one, two, records)


async def test_standby_leaves_a_planned_pause_to_the_operator(stack: tuple[Zone, Zone]) -> None:
    one, two = stack
    two.config = automatic(two.config, "az1", grace=0)
    await one.start()
    await two.start()
    await wait_for(lambda: leads(one), "zone 1 to lead")
    await call("POST", f"{one.url}/pause", expect=200)
    await wait_for(lambda: decided(two, "az1 is paused"), "zone 2 to see zone 1 paused")
    # Past the TTL of zone 1's lease (unchanged since the pause): with no grace, zone 2 would
    # have taken a silent live lease over by now.
    await asyncio.sleep(one.config.service.lease.ttl_seconds + 2)
    status = await decided(two, "az1 is paused (a planned handshake is the operator's)")
    assert status is not None, await status_of(two.url)
    assert status["state"] == "STANDBY"
    assert status["operation"] is None


async def decided(zone: Zone, words: str) -> dict[str, Any] | None:
    """The status once the zone's automatic failover has decided something saying ``words``."""
    body = await status_of(zone.url)
    sentence = body["automaticFailover"]["lastDecision"] or ""
    return body if words in sentence else None


async def test_standby_takes_over_a_sick_zone_whose_agent_lives(
    stack: tuple[Zone, Zone], agent_processes: AgentProcessFactory
) -> None:
    """Zone 1's Pinot dies, its agent lives (its lease stays live and renewed): zone 2 takes
    over once zone 1 has published itself unhealthy for ``unhealthySeconds``, and zone 1's
    agent, fenced by the new term, stops backing up within a lease round without fighting."""
    one, two = stack
    unhealthy_seconds = 4.0
    two.config = automatic(two.config, "az1", grace=600, unhealthySeconds=unhealthy_seconds)
    old = agent_processes(one)
    await two.start()
    await old.start()
    await wait_for(lambda: leads_url(old.url), "zone 1 to lead", within=20)
    for _ in range(COMMITS):
        await one.pinot.cluster.commit_consuming(REALTIME_TABLE)
    records = await backed_up_catalog(one)
    await wait_for(lambda: decided(two, "health healthy"), "zone 2 to see zone 1 healthy")
    loop = asyncio.get_running_loop()
    await one.pinot.stop()
    sick_at = loop.time()

    async def failed_over() -> dict[str, Any] | None:
        if (await status_of(two.url))["operation"] is None:
            return None
        return await activation_done(two.url)

    done = await wait_for(failed_over, "zone 2 to take the sick zone over", within=60)
    waited = loop.time() - sick_at
    assert done["operation"]["request"]["automatic"] == "unhealthy", done["operation"]
    assert done["primary"]["automatic"] == "unhealthy"
    assert done["primary"]["previousZone"] == "az1"
    assert waited >= unhealthy_seconds, "it waited for the unhealthy streak"
    retry = one.config.service.lease.retry_period_seconds

    async def fenced() -> dict[str, Any] | None:
        body = await status_of(old.url)
        return body if body["state"] in ("FENCED", "STANDBY") and not body["leading"] else None

    await wait_for(fenced, "zone 1's agent to stand down", within=2 * retry + 5)
    assert old.is_running, "zone 1's agent stood down without exiting"
    await assert_restored(one, two, records)
    metrics = await prometheus(two)
    assert metrics['az_agent_automatic_activations_total{reason="unhealthy"}'] == 1


async def leads_url(url: str) -> dict[str, Any] | None:
    body = await status_of(url)
    return body if body["leader"] and body["leading"] else None


async def test_no_automatic_failback_to_a_zone_that_took_over_automatically(
    stack: tuple[Zone, Zone], agent_processes: AgentProcessFactory
) -> None:
    """Zone 1 became primary by taking the group over from zone 2 automatically: when zone 1
    dies in turn, zone 2 does not take it back by itself (an operator decides)."""
    one, two = stack
    async with open_bucket(one.config) as store:
        record = PrimaryRecord(
            zone="az1",
            term=1,
            since=datetime.now(UTC),
            operation_id="earlier-automatic-failover",
            nonce="seeded",
            previous_zone="az2",
            automatic="lease-expired",
        )
        await store.put(primary_key("default"), record.encode(), if_none_match=True)
    two.config = automatic(two.config, "az1", grace=0)
    old = agent_processes(one)
    await two.start()
    await zone_one_dies(one, old)
    body = await wait_for(
        lambda: decided(two, "failing back is an operator's call"),
        "zone 2 to refuse an automatic failback",
        within=30,
    )
    ttl = one.config.service.lease.ttl_seconds
    lease_seconds = body["automaticFailover"]["lastDecision"]
    assert body["state"] == "STANDBY", body
    assert body["operation"] is None, body
    # Long enough past the TTL that, but for the rule, it would have activated.
    await asyncio.sleep(ttl)
    body = await status_of(two.url)
    assert body["state"] == "STANDBY", (body, lease_seconds)
    assert body["operation"] is None, body


async def test_at_most_one_automatic_activation_per_cooldown(
    stack: tuple[Zone, Zone], agent_processes: AgentProcessFactory
) -> None:
    """Zone 2 activated automatically a minute ago (its journal says so; it was then put back
    to standby): with a cooldown of an hour it does not do it again, even with the source
    gone, and after a restart too (the cooldown is read from the journal)."""
    one, two = stack
    async with open_bucket(two.config) as store:
        journal = OperationJournal(store, "az2", SystemClock())
        earlier = Operation.start(
            "activate",
            ["claim-primary"],
            datetime.now(UTC) - timedelta(minutes=1),
            request={"zone": "az1", "automatic": "lease-expired"},
            source_zone="az1",
        )
        await journal.save(earlier)
        await journal.finish(earlier, "rehydrate-segments: failed: injected")
    two.config = automatic(two.config, "az1", grace=0, cooldownMinutes=60)
    await two.start()
    await zone_one_dies(one, agent_processes(one))
    body = await wait_for(
        lambda: decided(two, "within the cooldown"), "zone 2 to hold back for the cooldown"
    )
    assert "min left" in body["automaticFailover"]["lastDecision"]
    assert body["state"] == "STANDBY", body


async def test_brownouts_shorter_than_the_renew_deadline_never_cause_a_takeover(
    stack: tuple[Zone, Zone], backend_pool: BackendPool
) -> None:
    """Both zones reach the bucket through a proxy that goes dark for less than the renew
    deadline, again and again; zone 2 judges with no grace at all, and never activates."""
    one, two = stack
    backend = backend_pool.get("s3")
    proxy = Brownout(backend.endpoint)
    await proxy.start()
    try:
        one.config = through(one.config, backend, proxy.url)
        two.config = automatic(through(two.config, backend, proxy.url), "az1", grace=0)
        await one.start()
        await two.start()
        await wait_for(lambda: leads(one), "zone 1 to lead")
        await wait_for(lambda: decided(two, "health"), "zone 2 to judge zone 1")
        deadline = one.config.service.lease.renew_deadline_seconds
        rounds = 5
        for _ in range(rounds):
            proxy.dark(True)
            await asyncio.sleep(deadline * 0.6)
            proxy.dark(False)
            await asyncio.sleep(deadline)
            body = await status_of(two.url)
            assert body["state"] == "STANDBY", body
            assert body["operation"] is None, body
        assert proxy.injected > 0
        assert (await status_of(one.url))["state"] == "ACTIVE"
        metrics = await prometheus(two)
        assert not any(k.startswith("az_agent_automatic_activations_total") for k in metrics)
    finally:
        await one.stop()
        await two.stop()
        await proxy.stop()


def through(config: AgentConfig, backend: Any, endpoint: str) -> AgentConfig:
    """``config`` with its bucket reached through ``endpoint``."""
    document: dict[str, Any] = config.model_dump(mode="json", by_alias=True)
    storage = document["global"]["cloudStorage"]
    prefix = storage.get("prefix", "")
    moved = backend.through(config.storage, endpoint).model_dump(mode="json", by_alias=True)
    document["global"]["cloudStorage"] = {**moved, "prefix": prefix}
    return parse_config(document, environ={})
