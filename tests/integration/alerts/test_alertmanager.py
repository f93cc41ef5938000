"""Silences against a real Alertmanager: created, seen active, expired, and every error path."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from az_agent.drivers.alerts import NoSilences, open_silence_manager
from az_agent.drivers.alerts.alertmanager import AlertmanagerSilences
from az_agent.drivers.alerts.base import Matcher, SilenceState
from az_agent.drivers.errors import Misconfigured, NotFound, Unavailable
from tests.integration.alerts.conftest import CREATOR, BearerProxy, SilentServer
from tests.servers.alertmanager import BASIC_AUTH_PASSWORD, BASIC_AUTH_USER, AlertmanagerServer

HOUR = timedelta(hours=1)


async def _raw(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    """One request behind the driver's back."""
    async with aiohttp.ClientSession() as client, client.request(method, url, **kwargs) as reply:
        text = await reply.text()
        return reply.status, (json.loads(text) if text else None)


async def test_silence_is_active_with_the_matchers_sent(
    alertmanager: AlertmanagerServer, silences: AlertmanagerSilences, matchers: list[Matcher]
) -> None:
    before = datetime.now(UTC)
    silence_id = await silences.silence(comment="az-agent pause op-1 (zone z1)", duration=2 * HOUR)
    assert silence_id is not None

    status, raw = await _raw("GET", f"{alertmanager.url}/api/v2/silence/{silence_id}")
    assert status == 200
    assert raw["status"]["state"] == "active"
    assert sorted(raw["matchers"], key=lambda m: m["name"]) == [
        {"name": "az_test", "value": matchers[0].value, "isRegex": False, "isEqual": True},
        {"name": "severity", "value": "info|debug", "isRegex": True, "isEqual": False},
    ]
    ends = datetime.fromisoformat(raw["endsAt"])
    assert before + 2 * HOUR - timedelta(seconds=5) <= ends <= datetime.now(UTC) + 2 * HOUR
    assert (raw["createdBy"], raw["comment"]) == (CREATOR, "az-agent pause op-1 (zone z1)")

    silence = await silences.get(silence_id)
    assert silence.state is SilenceState.ACTIVE
    assert set(silence.matchers) == set(matchers)
    assert silence.ends_at == ends
    assert await silences.is_active(silence_id)


async def test_explicit_matchers_and_creator_override_the_defaults(
    alertmanager: AlertmanagerServer, silences: AlertmanagerSilences
) -> None:
    own = Matcher("az_zone", f"z-{uuid.uuid4().hex}")
    silence_id = await silences.silence(
        comment="activate op-2", duration=HOUR, matchers=[own], created_by="someone"
    )
    assert silence_id is not None
    silence = await silences.get(silence_id)
    assert (silence.matchers, silence.created_by) == ((own,), "someone")
    await silences.expire(silence_id)


async def test_expire_ends_the_silence(
    alertmanager: AlertmanagerServer, silences: AlertmanagerSilences
) -> None:
    silence_id = await silences.silence(comment="pause op-3", duration=HOUR)
    assert silence_id is not None
    await silences.expire(silence_id)

    status, raw = await _raw("GET", f"{alertmanager.url}/api/v2/silence/{silence_id}")
    assert (status, raw["status"]["state"]) == (200, "expired")
    assert datetime.fromisoformat(raw["endsAt"]) <= datetime.now(UTC)
    assert (await silences.get(silence_id)).state is SilenceState.EXPIRED
    assert not await silences.is_active(silence_id)


async def test_expire_is_idempotent_for_expired_and_unknown_ids(
    alertmanager: AlertmanagerServer, silences: AlertmanagerSilences
) -> None:
    silence_id = await silences.silence(comment="pause op-4", duration=HOUR)
    assert silence_id is not None
    await silences.expire(silence_id)
    await silences.expire(silence_id)

    unknown = str(uuid.uuid4())
    # Alertmanager 0.25 answers 500 here (newer ones 404): the driver must still call it done.
    status, _ = await _raw("DELETE", f"{alertmanager.url}/api/v2/silence/{unknown}")
    assert status in (404, 500)
    await silences.expire(unknown)
    assert (await silences.get(silence_id)).state is SilenceState.EXPIRED


async def test_unknown_and_malformed_ids(silences: AlertmanagerSilences) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(NotFound, match=unknown):
        await silences.get(unknown)
    assert not await silences.is_active(unknown)
    with pytest.raises(Misconfigured, match="must be of type uuid"):
        await silences.get("not-a-uuid")
    with pytest.raises(Misconfigured, match="must be of type uuid"):
        await silences.expire("not-a-uuid")


@pytest.mark.parametrize(
    ("matcher", "message"),
    [
        (Matcher("az_test", "(", is_regex=True), "invalid regular expression"),
        (Matcher("az_test", ".*", is_regex=True), "must not match the empty string"),
        (Matcher("", "x"), "invalid label name"),
    ],
)
async def test_invalid_matchers_are_misconfigured_with_alertmanagers_reason(
    silences: AlertmanagerSilences, matcher: Matcher, message: str
) -> None:
    with pytest.raises(Misconfigured, match=message) as caught:
        await silences.silence(comment="pause op-5", duration=HOUR, matchers=[matcher])
    assert "answered 400" in str(caught.value)


async def test_bad_input_is_refused_before_sending(alertmanager: AlertmanagerServer) -> None:
    async with AlertmanagerSilences(alertmanager.url) as manager:
        with pytest.raises(ValueError, match="at least one matcher"):
            await manager.silence(comment="pause", duration=HOUR, matchers=[])
        one = [Matcher("az_test", "x")]
        with pytest.raises(ValueError, match="positive"):
            await manager.silence(comment="pause", duration=timedelta(0), matchers=one)
        with pytest.raises(ValueError, match="comment"):
            await manager.silence(comment="", duration=HOUR, matchers=one)
    with pytest.raises(Misconfigured, match="http"):
        AlertmanagerSilences("alertmanager:9093")
    with pytest.raises(RuntimeError, match="closed"):
        await manager.get(str(uuid.uuid4()))


async def test_unreachable_alertmanager_is_unavailable(
    closed_port: int, matchers: list[Matcher]
) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    async with AlertmanagerSilences(url, matchers=matchers) as manager:
        with pytest.raises(Unavailable, match=f"127.0.0.1:{closed_port}"):
            await manager.silence(comment="pause op-6", duration=HOUR)
        with pytest.raises(Unavailable):
            await manager.expire(str(uuid.uuid4()))
        with pytest.raises(Unavailable):
            await manager.get(str(uuid.uuid4()))


async def test_hung_alertmanager_times_out_as_unavailable(
    silent_server: SilentServer, matchers: list[Matcher]
) -> None:
    started = time.monotonic()
    async with AlertmanagerSilences(silent_server.url, matchers=matchers, timeout=0.3) as manager:
        with pytest.raises(Unavailable):
            await manager.silence(comment="pause op-7", duration=HOUR)
    assert time.monotonic() - started < 5


async def test_basic_auth(alertmanager_with_basic_auth: AlertmanagerServer) -> None:
    url = alertmanager_with_basic_auth.url
    matchers = [Matcher("az_test", uuid.uuid4().hex)]
    credentials = (BASIC_AUTH_USER, BASIC_AUTH_PASSWORD)
    async with AlertmanagerSilences(url, matchers=matchers, basic_auth=credentials) as manager:
        silence_id = await manager.silence(comment="pause op-8", duration=HOUR)
        assert silence_id is not None
        assert await manager.is_active(silence_id)
        await manager.expire(silence_id)
    wrong = (BASIC_AUTH_USER, "wrong")
    async with AlertmanagerSilences(url, matchers=matchers, basic_auth=wrong) as manager:
        with pytest.raises(Misconfigured, match="answered 401"):
            await manager.silence(comment="pause op-8", duration=HOUR)


async def test_bearer_token_for_an_auth_proxy(
    bearer_proxy: BearerProxy, matchers: list[Matcher]
) -> None:
    token = bearer_proxy.token
    async with AlertmanagerSilences(
        bearer_proxy.url, matchers=matchers, bearer_token=token
    ) as manager:
        silence_id = await manager.silence(comment="pause op-9", duration=HOUR)
        assert silence_id is not None
        await manager.expire(silence_id)
        assert (await manager.get(silence_id)).state is SilenceState.EXPIRED
    assert bearer_proxy.seen
    assert set(bearer_proxy.seen) == {f"Bearer {token}"}
    async with AlertmanagerSilences(bearer_proxy.url, matchers=matchers) as manager:
        with pytest.raises(Misconfigured, match="answered 401"):
            await manager.silence(comment="pause op-9", duration=HOUR)


async def test_no_alertmanager_means_no_silences() -> None:
    manager = open_silence_manager("", matchers=[Matcher("a", "b")])
    assert isinstance(manager, NoSilences)
    assert manager.enabled is False
    async with manager:
        assert await manager.silence(comment="pause op-10", duration=HOUR) is None
        await manager.expire(str(uuid.uuid4()))
        with pytest.raises(NotFound, match="disabled"):
            await manager.get("anything")
        assert not await manager.is_active("anything")


async def test_factory_opens_alertmanager_silences(alertmanager: AlertmanagerServer) -> None:
    async with open_silence_manager(
        alertmanager.url, matchers=[Matcher("az_test", uuid.uuid4().hex)]
    ) as manager:
        assert isinstance(manager, AlertmanagerSilences)
        assert manager.enabled is True
        silence_id = await manager.silence(comment="pause op-11", duration=HOUR)
        assert silence_id is not None
        assert await manager.is_active(silence_id)
        await manager.expire(silence_id)


async def test_find_returns_every_silence_whose_comment_carries_the_text(
    silences: AlertmanagerSilences,
) -> None:
    tag = f"az-agent-silence {uuid.uuid4().hex}"
    tagged = await silences.silence(comment=f"pause op-9 [{tag}]", duration=HOUR)
    other = await silences.silence(comment="pause op-10", duration=HOUR)
    assert tagged is not None
    assert other is not None
    assert [s.id for s in await silences.find(comment_contains=tag)] == [tagged]
    await silences.expire(tagged)
    found = await silences.find(comment_contains=tag)
    assert [(s.id, s.state) for s in found] == [(tagged, SilenceState.EXPIRED)]
    await silences.expire(other)
    with pytest.raises(ValueError, match="text"):
        await silences.find(comment_contains="")
    assert await NoSilences().find(comment_contains=tag) == []
