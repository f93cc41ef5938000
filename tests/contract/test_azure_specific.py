"""What only the Azure driver does: credential errors, SAS permissions, pinned reads."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from az_agent.drivers.errors import Misconfigured, PermissionDenied, PreconditionFailed, Unavailable
from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.config import CloudStorageSettings, StorageSecrets
from az_agent.drivers.storage.factory import open_object_store
from az_agent.drivers.storage.streams import aiter_bytes
from tests.conftest import BackendPool
from tests.servers.azurite import ACCOUNT, ACCOUNT_KEY, AzuriteBackend

WRONG_KEY = base64.b64encode(b"not the azurite key, but valid base64" * 2).decode()


@pytest.fixture
def azurite(backend_pool: BackendPool) -> AzuriteBackend:
    backend = backend_pool.get("azure")
    assert isinstance(backend, AzuriteBackend)
    return backend


@pytest.fixture
async def container(azurite: AzuriteBackend) -> CloudStorageSettings:
    settings, _ = await azurite.new_bucket()
    return settings


async def _check_fails(settings: CloudStorageSettings, secrets: StorageSecrets) -> Exception:
    store = await open_object_store(settings, secrets)
    try:
        with pytest.raises((Misconfigured, PermissionDenied)) as caught:
            await store.check()
    finally:
        await store.close()
    return caught.value


async def test_wrong_account_key_is_misconfigured(
    azurite: AzuriteBackend, container: CloudStorageSettings
) -> None:
    error = await _check_fails(container, azurite.secrets(account_key=WRONG_KEY))
    assert isinstance(error, Misconfigured)
    assert "rejected the credentials" in str(error)
    assert WRONG_KEY not in str(error)


async def test_account_key_that_is_not_base64_is_misconfigured(
    azurite: AzuriteBackend, container: CloudStorageSettings
) -> None:
    error = await _check_fails(container, azurite.secrets(account_key="not-base64!"))
    assert isinstance(error, Misconfigured)
    assert "not-base64!" not in str(error)


async def test_malformed_or_missing_connection_string_is_misconfigured(
    container: CloudStorageSettings,
) -> None:
    garbage = StorageSecrets.model_validate({"connectionString": "AccountKey=s3cret-value"})
    with pytest.raises(Misconfigured) as caught:
        await open_object_store(container, garbage)
    assert "s3cret-value" not in str(caught.value)
    with pytest.raises(Misconfigured, match="connectionString"):
        await open_object_store(container, StorageSecrets())


async def test_ambient_identity_needs_azure_identity(
    container: CloudStorageSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity.aio", None)  # import fails as if absent
    ambient = container.model_copy(update={"use_secret": False})
    with pytest.raises(Misconfigured, match="accountUrl"):
        await open_object_store(ambient, None)
    azure = ambient.azure.model_copy(update={"account_url": "https://x.blob.core.windows.net"})
    with pytest.raises(Misconfigured, match="azure-identity"):
        await open_object_store(ambient.model_copy(update={"azure": azure}), None)


async def test_read_only_sas_cannot_write(
    azurite: AzuriteBackend, container: CloudStorageSettings
) -> None:
    sas = generate_container_sas(
        ACCOUNT,
        container.azure.container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    conn = f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sas}"
    secrets = StorageSecrets.model_validate({"connectionString": conn})
    store = await open_object_store(container, secrets)
    try:
        await store.check()
        assert [info async for info in store.list()] == []
        with pytest.raises(PermissionDenied) as caught:
            await store.put("lease.json", b"x")
        assert sas not in str(caught.value)
    finally:
        await store.close()


async def test_unreachable_endpoint_is_unavailable(
    azurite: AzuriteBackend, container: CloudStorageSettings
) -> None:
    quick = container.retry.model_copy(update={"attempts": 2, "base_delay_seconds": 0.001})
    settings = azurite.through(container, "http://127.0.0.1:9").model_copy(update={"retry": quick})
    store = await open_object_store(settings, azurite.secrets())
    try:
        with pytest.raises(Unavailable, match="connection failed"):
            await store.head("anything")
    finally:
        await store.close()


@pytest.fixture
async def store(
    azurite: AzuriteBackend, container: CloudStorageSettings
) -> AsyncIterator[ObjectStore]:
    opened = await open_object_store(container, azurite.secrets())
    try:
        yield opened
    finally:
        await opened.close()


async def test_read_is_pinned_to_the_version_opened(store: ObjectStore) -> None:
    first = os.urandom(3 << 20)
    await store.put("seg", aiter_bytes(first, 1 << 20))
    async with store.open("seg", chunk_size=1 << 20) as reader:
        chunks = aiter(reader)
        assert await anext(chunks) == first[: 1 << 20]
        await store.put("seg", b"replaced")
        with pytest.raises(PreconditionFailed):
            await anext(chunks)


async def test_streamed_bodies_around_the_single_put_limit(store: ObjectStore) -> None:
    for size in (0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 9 << 20):
        data = os.urandom(size)
        written = await store.put(f"sizes/{size}", aiter_bytes(data, 300_000))
        read, info = await store.get(f"sizes/{size}")
        assert (read, info.size, info.version) == (data, size, written.version)
    big = os.urandom(9 << 20)
    await store.put("sizes/bytes", big)
    assert (await store.get("sizes/bytes"))[0] == big
