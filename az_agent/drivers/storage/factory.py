"""Builds the configured :class:`ObjectStore`, importing only the chosen vendor SDK."""

from __future__ import annotations

import importlib

from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.config import CloudStorageSettings, StorageSecrets
from az_agent.drivers.storage.prefixed import PrefixedObjectStore

_MODULES = {
    "s3": "az_agent.drivers.storage.s3",
    "gcs": "az_agent.drivers.storage.gcs",
    "azure": "az_agent.drivers.storage.azure",
    "file": "az_agent.drivers.storage.file",
}


async def open_object_store(
    settings: CloudStorageSettings, secrets: StorageSecrets | None = None
) -> ObjectStore:
    """Connect the driver named by ``settings.type`` and apply the key prefix.

    Each driver module exposes ``async def connect(settings, secrets) -> ObjectStore``. The
    store is not probed here; call :meth:`ObjectStore.check` to fail fast at start-up.
    """
    module = importlib.import_module(_MODULES[settings.type])
    store: ObjectStore = await module.connect(settings, secrets)
    return PrefixedObjectStore(store, settings.prefix)
