"""What the shared contract cannot see of the ``gcs`` driver.

fake-gcs-server covers the emulator path. The credentialed path (service-account token, the
status query of an interrupted resumable upload) runs against two small scripted servers on
127.0.0.1: a token endpoint and a GCS API that persists only part of a chunk or loses the answer
to one, as real GCS may.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from az_agent.drivers.errors import CorruptObject, Misconfigured, Unavailable
from az_agent.drivers.storage import gcs
from az_agent.drivers.storage.base import SHA256_METADATA_KEY
from az_agent.drivers.storage.config import CloudStorageSettings, StorageSecrets
from az_agent.drivers.storage.factory import open_object_store
from az_agent.drivers.storage.retry import RetryPolicy
from tests.conftest import BackendPool
from tests.servers.base import StorageBackend

MiB = 1 << 20
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.002)
ACCESS_TOKEN = "test-access-token"


@pytest.fixture
def gcs_backend(backend_pool: BackendPool) -> StorageBackend:
    return backend_pool.get("gcs")


async def _stream(data: bytes, chunk: int = MiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


@pytest.mark.parametrize("size", [10 * MiB, 11 * MiB + 3], ids=["whole-parts", "short-last"])
async def test_gcs_resumable_upload_records_checksum(
    gcs_backend: StorageBackend, size: int
) -> None:
    settings, secrets = await gcs_backend.new_bucket()
    settings = settings.model_copy(update={"part_size_mib": 5})
    data = os.urandom(size)
    async with await open_object_store(settings, secrets) as store:
        written = await store.put("big", _stream(data))
        head = await store.head("big")
        assert (head.size, head.version) == (size, written.version)
        assert head.sha256 == written.sha256 == hashlib.sha256(data).hexdigest()
        assert (await store.get("big"))[0] == data
        await gcs_backend.corrupt(settings, secrets, "big")
        with pytest.raises(CorruptObject):
            await store.get("big")


async def test_gcs_emulator_host_is_honoured_and_needs_a_scheme(
    gcs_backend: StorageBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, secrets = await gcs_backend.new_bucket()
    unset = settings.model_copy(update={"gcs": settings.gcs.model_copy(update={"endpoint": ""})})
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_backend.endpoint)
    async with await open_object_store(unset, secrets) as store:
        await store.check()
        await store.put("k", b"v")
        assert (await store.get("k"))[0] == b"v"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_backend.endpoint.removeprefix("http://"))
    with pytest.raises(Misconfigured, match="http://"):
        await open_object_store(unset, secrets)


async def test_gcs_missing_bucket_is_misconfigured_on_list(gcs_backend: StorageBackend) -> None:
    settings, secrets = await gcs_backend.new_bucket()
    missing = settings.gcs.model_copy(update={"bucket": "no-such-bucket-here"})
    async with await open_object_store(settings.model_copy(update={"gcs": missing}), secrets) as s:
        with pytest.raises(Misconfigured, match="does not exist"):
            [info async for info in s.list()]


async def test_gcs_secret_that_is_not_json_is_misconfigured_without_echo() -> None:
    settings = CloudStorageSettings.model_validate({"type": "gcs", "use_secret": True})
    secrets = StorageSecrets(secret_key=SecretStr("-----BEGIN PRIVATE KEY----- not json"))
    with pytest.raises(Misconfigured) as caught:
        await open_object_store(settings, secrets)
    assert "PRIVATE" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


@dataclass
class ScriptedGcs:
    """A token endpoint and the slice of the GCS API a resumable upload uses."""

    token_status: int = 200
    token_requests: list[dict[str, str]] = field(default_factory=list)
    authorizations: set[str] = field(default_factory=set)
    puts: int = 0
    stored: bytearray = field(default_factory=bytearray)
    patched: dict[str, str] = field(default_factory=dict)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_post("/token", self.token)
        app.router.add_get("/storage/v1/b/{bucket}", self.bucket)
        app.router.add_post("/upload/storage/v1/b/{bucket}/o", self.start)
        app.router.add_put("/session", self.chunk)
        app.router.add_patch("/storage/v1/b/{bucket}/o/{key}", self.patch)
        return app

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(await request.post()))  # type: ignore[arg-type]
        if self.token_status != 200:
            body = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            return web.json_response(body, status=self.token_status)
        return web.json_response({"access_token": ACCESS_TOKEN, "expires_in": 3600})

    async def bucket(self, request: web.Request) -> web.Response:
        self.authorizations.add(request.headers.get("Authorization", ""))
        return web.json_response({"name": request.match_info["bucket"]})

    async def start(self, request: web.Request) -> web.Response:
        self.authorizations.add(request.headers.get("Authorization", ""))
        assert request.query["uploadType"] == "resumable"
        return web.json_response({}, headers={"Location": f"{self.url}/session"})

    def _object(self) -> dict[str, str]:
        return {"name": "big", "size": str(len(self.stored)), "generation": "7"}

    def _range(self) -> dict[str, str]:
        return {"Range": f"bytes=0-{len(self.stored) - 1}"} if self.stored else {}

    async def chunk(self, request: web.Request) -> web.Response:
        """1st chunk: keep 2 MiB of it. 2nd: keep it all, answer 503. Then behave."""
        body = await request.read()
        match = re.fullmatch(r"bytes (\*|(\d+)-(\d+))/(\*|\d+)", request.headers["Content-Range"])
        assert match is not None
        if match[1] == "*" and match[4] == "*":  # status query
            return web.Response(status=308, headers=self._range())
        if match[2] is not None:
            assert int(match[2]) == len(self.stored), "chunk does not start where data ends"
            self.puts += 1
            self.stored += body[: 2 * MiB] if self.puts == 1 else body
            if self.puts == 2:
                return web.json_response({"error": {"code": 503}}, status=503)
        if match[4] != "*" and int(match[4]) == len(self.stored):
            return web.json_response(self._object())
        return web.Response(status=308, headers=self._range())

    async def patch(self, request: web.Request) -> web.Response:
        assert request.query["ifGenerationMatch"] == "7"
        self.patched = (await request.json())["metadata"]
        return web.json_response({**self._object(), "metadata": self.patched})


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedGcs]:
    server = ScriptedGcs()
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield server
    finally:
        await runner.cleanup()


def _service_account(token_uri: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account = {
        "type": "service_account",
        "client_email": "az-agent@test.iam.gserviceaccount.com",
        "private_key": pem,
        "token_uri": token_uri,
    }
    return json.dumps(account)


async def _credentialed_store(server: ScriptedGcs) -> gcs.GcsObjectStore:
    """What ``connect`` builds for Google, pointed at the scripted server."""
    settings = CloudStorageSettings.model_validate({"type": "gcs", "use_secret": True})
    secrets = StorageSecrets(secret_key=SecretStr(_service_account(f"{server.url}/token")))
    session = aiohttp.ClientSession()
    token = await gcs._make_token(settings, secrets, session)
    return gcs.GcsObjectStore(
        "bk", session=session, token=token, api_root=server.url, retry=FAST_RETRY, part_size=5 * MiB
    )


async def test_gcs_service_account_token_is_sent(scripted: ScriptedGcs) -> None:
    async with await _credentialed_store(scripted) as store:
        await store.check()
        await store.check()
    assert scripted.authorizations == {f"Bearer {ACCESS_TOKEN}"}
    [grant] = scripted.token_requests
    claims = jwt.decode(grant["assertion"], options={"verify_signature": False})
    assert claims["iss"] == "az-agent@test.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/devstorage.read_write"


@pytest.mark.parametrize(
    ("status", "error"), [(400, Misconfigured), (503, Unavailable)], ids=["rejected", "down"]
)
async def test_gcs_token_failures_are_typed_and_retried_only_by_our_policy(
    scripted: ScriptedGcs, status: int, error: type[Exception]
) -> None:
    scripted.token_status = status
    async with await _credentialed_store(scripted) as store:
        with pytest.raises(error) as caught:
            await store.check()
    assert "PRIVATE KEY" not in str(caught.value)
    # gcloud-aio's own tenacity loop would ask 5 times per attempt, waiting up to a minute.
    assert len(scripted.token_requests) == (FAST_RETRY.attempts if status == 503 else 1)


async def test_gcs_interrupted_resumable_upload_resumes_from_what_the_server_kept(
    scripted: ScriptedGcs,
) -> None:
    data = os.urandom(12 * MiB)
    async with await _credentialed_store(scripted) as store:
        info = await store.put("big", _stream(data))
    assert scripted.stored == data
    assert scripted.puts >= 3
    assert info.version == "7"
    assert info.sha256 == scripted.patched[SHA256_METADATA_KEY]
    assert info.sha256 == hashlib.sha256(data).hexdigest()
