"""Credentials for the controller: Basic (username/password) or Bearer (token), from a secret.

The secret is a directory ``<secretsDir>/<authSecret>/`` whose files are its keys, as Kubernetes
mounts it: ``token``, or ``username`` and ``password``. Values are never logged.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from pydantic import SecretStr

from az_agent.drivers.errors import Misconfigured
from az_agent.drivers.settings_base import SettingsModel


class PinotCredentials(SettingsModel):
    """Either ``token`` or ``username`` + ``password``."""

    username: SecretStr | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None

    def authorization(self) -> str | None:
        """The ``Authorization`` header value, or ``None`` when there are no credentials."""
        if self.token is not None:
            token = self.token.get_secret_value().strip()
            if token.lower().startswith(("basic ", "bearer ")):
                return token
            return f"Bearer {token}"
        if self.username is not None and self.password is not None:
            pair = f"{self.username.get_secret_value()}:{self.password.get_secret_value()}"
            return "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return None


def _read_key(directory: Path, key: str) -> SecretStr | None:
    path = directory / key
    if not path.is_file():
        return None
    return SecretStr(path.read_text(encoding="utf-8").strip())


def read_pinot_credentials_sync(
    secrets_dir: str | Path, secret_name: str
) -> PinotCredentials | None:
    """Blocking form of :func:`read_pinot_credentials`, for start-up code outside the loop."""
    if not secret_name:
        return None
    directory = Path(secrets_dir) / secret_name
    if not directory.is_dir():
        raise Misconfigured(f"pinot auth secret {secret_name!r}: no directory {directory}")
    credentials = PinotCredentials(
        username=_read_key(directory, "username"),
        password=_read_key(directory, "password"),
        token=_read_key(directory, "token"),
    )
    if credentials.authorization() is None:
        raise Misconfigured(
            f"pinot auth secret {secret_name!r} needs key 'token' or keys 'username' and 'password'"
        )
    return credentials


async def read_pinot_credentials(
    secrets_dir: str | Path, secret_name: str
) -> PinotCredentials | None:
    """The credentials named by ``authSecret`` (``None`` when it is ``""``).

    ``Misconfigured`` when the secret is missing or holds neither form.
    """
    return await asyncio.to_thread(read_pinot_credentials_sync, secrets_dir, secret_name)
