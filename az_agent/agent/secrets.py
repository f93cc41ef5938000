"""Reads credentials mounted as files: ``<secretsDir>/<secretName>/<key>``.

That is how the Helm chart mounts a Kubernetes secret; the values never reach logs, errors or
printed configuration (they are held as ``SecretStr``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from az_agent.agent.config import AgentConfig, ConfigError
from az_agent.drivers.storage.config import StorageSecrets

STORAGE_SECRET_KEYS = {
    "s3": ("accessKey", "secretKey"),
    "gcs": ("secretKey",),
    "azure": ("connectionString",),
    "file": (),
}


def read_secret(secrets_dir: str, secret_name: str, key: str) -> SecretStr:
    """One secret value; ``ConfigError`` naming the file (never its content) when unreadable."""
    path = Path(secrets_dir) / secret_name / key
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"secret '{secret_name}' key '{key}': cannot read {path} ({exc.strerror})"
        ) from None
    if not value:
        raise ConfigError(f"secret '{secret_name}' key '{key}': {path} is empty")
    return SecretStr(value)


def read_storage_secrets(config: AgentConfig) -> StorageSecrets | None:
    """The storage credentials, or ``None`` when the SDK's ambient identity is to be used."""
    storage = config.storage
    keys = STORAGE_SECRET_KEYS[storage.type]
    if not storage.use_secret or not keys:
        return None
    values = {
        key: read_secret(config.service.secrets_dir, storage.secret_name, key) for key in keys
    }
    return StorageSecrets.model_validate(values)
