"""What the contract suite needs from a storage server started for tests."""

from __future__ import annotations

import abc

from az_agent.drivers.storage.config import CloudStorageSettings, StorageSecrets


class StorageBackend(abc.ABC):
    """A real (or emulated) storage server on 127.0.0.1, started and stopped by the tests."""

    name: str

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server and wait until it answers."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server and remove what it stored."""

    @abc.abstractmethod
    async def new_bucket(self) -> tuple[CloudStorageSettings, StorageSecrets | None]:
        """Create a fresh empty bucket/container; settings and secrets that reach it."""

    @abc.abstractmethod
    def through(self, settings: CloudStorageSettings, endpoint: str) -> CloudStorageSettings:
        """The same settings, sent to ``endpoint`` (a proxy in front of the server) instead."""

    @property
    @abc.abstractmethod
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>`` of the server, for proxies in front of it."""

    @abc.abstractmethod
    async def corrupt(
        self, settings: CloudStorageSettings, secrets: StorageSecrets | None, key: str
    ) -> None:
        """Flip one byte of the stored object ``key`` behind the driver's back, keeping its
        recorded checksum metadata, as a bit rot or a buggy writer would."""
