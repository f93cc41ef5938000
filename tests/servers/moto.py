"""The ``s3`` backend: ``moto_server`` in a subprocess on 127.0.0.1.

A subprocess rather than moto's in-process ``ThreadedMotoServer``: the contract's memory test
traces this interpreter's allocations, and the server's stored objects must not count.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from pydantic import SecretStr

from az_agent.drivers.storage.base import SHA256_METADATA_KEY
from az_agent.drivers.storage.config import CloudStorageSettings, S3Settings, StorageSecrets
from az_agent.drivers.storage.keys import join_key
from tests.servers.base import StorageBackend
from tests.servers.process import free_port, stop_process

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
START_TIMEOUT = 30.0


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status < 500
    except OSError:
        return False
    finally:
        connection.close()


class MotoBackend(StorageBackend):
    name = "s3"

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self._port = 0
        self._session = AioSession()

    def start(self) -> None:
        self._port = free_port()
        handle, name = tempfile.mkstemp(prefix="moto-", suffix=".log")
        self._log = Path(name)
        executable = Path(sys.executable).with_name("moto_server")
        with os.fdopen(handle, "wb") as log:  # the server writes its access log here
            self._process = subprocess.Popen(
                [str(executable), "-H", "127.0.0.1", "-p", str(self._port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self._port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = self._log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"moto_server did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self._process)
        self._process = None
        if self._log is not None:
            self._log.unlink(missing_ok=True)

    @property
    def endpoint(self) -> str:
        assert self._process is not None, "backend not started"
        return f"http://127.0.0.1:{self._port}"

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Any]:
        """A raw aiobotocore client, to act behind the driver's back."""
        config = AioConfig(s3={"addressing_style": "path"})
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
