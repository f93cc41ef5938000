"""What every S3 server the tests start has in common: a raw client, buckets, corruption.

The servers (moto, SeaweedFS) differ in how they start and stop; once one answers at
:attr:`S3ServerBackend.endpoint`, the tests act on it the same way.
"""

from __future__ import annotations

import contextlib
import http.client
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from pydantic import SecretStr

from az_agent.drivers.storage.base import SHA256_METADATA_KEY
from az_agent.drivers.storage.config import CloudStorageSettings, S3Settings, StorageSecrets
from az_agent.drivers.storage.keys import join_key
from tests.servers.base import StorageBackend

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def answers(port: int) -> bool:
    """True once an HTTP server on ``port`` answers without a server error."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status < 500
    except OSError:
        return False
    finally:
        connection.close()


class S3ServerBackend(StorageBackend):
    """A local S3 server; subclasses start and stop it and say where it answers."""

    name = "s3"
    client_options: ClassVar[dict[str, str]] = {}
    """Extra ``AioConfig`` options of the raw client (a server's checksum quirks)."""

    def __init__(self) -> None:
        self._session = AioSession()

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """The server's process, for benchmarks that count its CPU."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Any]:
        """A raw aiobotocore client, to act behind the driver's back."""
        config = AioConfig(s3={"addressing_style": "path"}, **self.client_options)
        async with self._session.create_client(
            "s3",
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=config,
        ) as client:
            yield client

    async def new_bucket(self) -> tuple[CloudStorageSettings, StorageSecrets | None]:
        name = f"az-{uuid.uuid4().hex[:20]}"
        async with self.client() as client:
            await client.create_bucket(Bucket=name)
        settings = CloudStorageSettings(
            type="s3",
            use_secret=True,
            s3=S3Settings(bucket=name, endpoint=self.endpoint, addressing_style="path"),
        )
        secrets = StorageSecrets(access_key=SecretStr(ACCESS_KEY), secret_key=SecretStr(SECRET_KEY))
        return settings, secrets

    def through(self, settings: CloudStorageSettings, endpoint: str) -> CloudStorageSettings:
        s3 = settings.s3.model_copy(update={"endpoint": endpoint})
        return settings.model_copy(update={"s3": s3})

    async def corrupt(
        self, settings: CloudStorageSettings, secrets: StorageSecrets | None, key: str
    ) -> None:
        full_key = join_key(settings.prefix, key)
        bucket = settings.s3.bucket
        async with self.client() as client:
            reply = await client.get_object(Bucket=bucket, Key=full_key)
            async with reply["Body"] as body:
                data = bytearray(await body.read())
            metadata: dict[str, str] = reply["Metadata"]
            assert SHA256_METADATA_KEY in metadata, metadata
            data[-1] ^= 0xFF
            await client.put_object(
                Bucket=bucket, Key=full_key, Body=bytes(data), Metadata=metadata
            )
