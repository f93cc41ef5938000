"""The ``file`` backend: a temporary directory, no server."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from az_agent.drivers.storage.config import CloudStorageSettings, FileSettings, StorageSecrets
from tests.servers.base import StorageBackend


class FileBackend(StorageBackend):
    name = "file"

    def __init__(self) -> None:
        self._root: Path | None = None

    def start(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="az-file-"))

    def stop(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    @property
    def root(self) -> Path:
        assert self._root is not None, "backend not started"
        return self._root

    async def new_bucket(self) -> tuple[CloudStorageSettings, StorageSecrets | None]:
        path = self.root / uuid.uuid4().hex
        return CloudStorageSettings(type="file", file=FileSettings(path=str(path))), None

    def through(self, settings: CloudStorageSettings, endpoint: str) -> CloudStorageSettings:
        raise NotImplementedError("the file backend has no network endpoint")

    @property
    def endpoint(self) -> str:
        raise NotImplementedError("the file backend has no network endpoint")

    async def corrupt(
        self, settings: CloudStorageSettings, secrets: StorageSecrets | None, key: str
    ) -> None:
        path = Path(settings.file.path) / settings.prefix / key
        raw = bytearray(path.read_bytes())
        mtime = path.stat().st_mtime_ns  # kept: bit rot does not touch it
        raw[-1] ^= 0xFF
        path.write_bytes(bytes(raw))
        os.utime(path, ns=(mtime, mtime))
