"""The ``azure`` backend: Azurite's blob service (npm ``azurite``), in memory, on 127.0.0.1.

Azurite is found through ``$AZURITE_BIN`` or ``<repo>/.emu/node_modules/.bin/azurite-blob``. It
listens on a port the OS picks (``--blobPort 0``) and prints it, so parallel runs cannot race
for a port. ``--skipApiVersionCheck`` is required: the SDK speaks a newer API than Azurite.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from azure.storage.blob.aio import ContainerClient

from az_agent.drivers.storage.config import CloudStorageSettings, StorageSecrets
from az_agent.drivers.storage.keys import join_key
from tests.servers.base import StorageBackend
from tests.servers.process import stop_process

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "devstoreaccount1"
# The well-known development key of Azurite and the Azure Storage emulator: not a secret.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_LISTENING = re.compile(rb"listens on http://127\.0\.0\.1:(\d+)")
_START_TIMEOUT = 30.0


def azurite_binary() -> Path:
    """Where ``azurite-blob`` is, or an error saying how to install it."""
    configured = os.environ.get("AZURITE_BIN")
    path = Path(configured) if configured else REPO / ".emu/node_modules/.bin/azurite-blob"
    if not path.is_file():
        raise RuntimeError(
            f"azurite-blob not found at {path}: run `npm install --prefix .emu azurite@3.35.0` "
            "in the repository root, or point AZURITE_BIN at an azurite-blob executable"
        )
    return path


def connection_string(blob_endpoint: str, account_key: str = ACCOUNT_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={account_key};"
        f"BlobEndpoint={blob_endpoint};"
    )


class AzuriteBackend(StorageBackend):
    name = "azure"

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self._port: int | None = None

    def start(self) -> None:
        binary = azurite_binary()
        handle, log_name = tempfile.mkstemp(prefix="azurite-", suffix=".log")
        self._log = Path(log_name)
        with os.fdopen(handle, "wb") as log:
            self._process = subprocess.Popen(
                [
                    str(binary),
                    *("--blobHost", "127.0.0.1", "--blobPort", "0"),
                    *("--loose", "--skipApiVersionCheck", "--inMemoryPersistence"),
                    *("--disableTelemetry", "--silent"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        assert self._process is not None
        assert self._log is not None
        deadline = time.monotonic() + _START_TIMEOUT
        output = b""
        while time.monotonic() < deadline:
            output = self._log.read_bytes()
            if found := _LISTENING.search(output):
                return int(found.group(1))
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"azurite did not start: {output.decode(errors='replace')[-2000:]}")

    def stop(self) -> None:
        stop_process(self._process)
        self._process = None
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None

    @property
    def endpoint(self) -> str:
        assert self._port is not None, "backend not started"
        return f"http://127.0.0.1:{self._port}"

    @property
    def blob_endpoint(self) -> str:
        return f"{self.endpoint}/{ACCOUNT}"

    def secrets(self, account_key: str = ACCOUNT_KEY) -> StorageSecrets:
        conn = connection_string(self.blob_endpoint, account_key)
        return StorageSecrets.model_validate({"connectionString": conn})

    def _client(self, container: str) -> ContainerClient:
        return ContainerClient.from_connection_string(
            connection_string(self.blob_endpoint), container, retry_total=0
        )

    async def new_bucket(self) -> tuple[CloudStorageSettings, StorageSecrets | None]:
        container = f"c{uuid.uuid4().hex}"
        async with self._client(container) as client:
            await client.create_container()
        # model_validate rather than keywords: mypy cannot see pydantic's Field defaults.
        settings = CloudStorageSettings.model_validate(
            {"type": "azure", "useSecret": True, "azure": {"container": container}}
        )
        return settings, self.secrets()

    def through(self, settings: CloudStorageSettings, endpoint: str) -> CloudStorageSettings:
        azure = settings.azure.model_copy(update={"endpoint": f"{endpoint}/{ACCOUNT}"})
        return settings.model_copy(update={"azure": azure})

    async def corrupt(
        self, settings: CloudStorageSettings, secrets: StorageSecrets | None, key: str
    ) -> None:
        async with self._client(settings.azure.container) as client:
            blob = client.get_blob_client(join_key(settings.prefix, key))
            props = await blob.get_blob_properties()
            data = bytearray(await (await blob.download_blob()).readall())
            data[-1] ^= 0xFF
            await blob.upload_blob(bytes(data), overwrite=True, metadata=props.metadata)
