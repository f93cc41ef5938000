"""Settings of the object-storage layer, keyed like the Helm values' ``cloudStorage`` block."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from az_agent.drivers.settings_base import SettingsModel

StorageType = Literal["s3", "gcs", "azure", "file"]


_Model = SettingsModel


class S3Settings(_Model):
    region: str = Field(default="us-east-1", description="AWS region of the bucket.")
    bucket: str = Field(default="kfuse-dr", min_length=3, description="S3 bucket name.")
    endpoint: str = Field(
        default="", description="Endpoint of an S3-compatible store or emulator; empty for AWS."
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="Bucket addressing; S3-compatible stores usually need 'path'."
    )
    spool_dir: str = Field(
        default="",
        description="Directory of the temporary files that hold a segment larger than one "
        "PutObject (24 MiB) while it is hashed and uploaded in parallel parts; empty: the "
        "system's temporary directory ($TMPDIR, else /tmp).",
    )
    spool_mib: int = Field(
        default=4096,
        ge=0,
        description="Disk those temporary files may take together, MiB; a segment that does "
        "not fit, or meets a full disk, is streamed, then copied onto itself to record its "
        "SHA-256. 0: never spool.",
    )
    buffer_mib: int = Field(
        default=32,
        ge=1,
        description="Memory the bodies of uploads in flight may take together, MiB (a "
        "PutObject up to 24 MiB holds its size, a part partSizeMib): the agent's peak is then "
        "the same whatever the segment size. Raise it for more parallel parts on a slow link.",
    )


class GcsSettings(_Model):
    bucket: str = Field(default="kfuse-dr", min_length=3, description="GCS bucket name.")
    endpoint: str = Field(
        default="",
        description="API root of a GCS emulator; empty for Google (STORAGE_EMULATOR_HOST "
        "is honoured too).",
    )


class AzureSettings(_Model):
    container: str = Field(default="kfuse-dr", min_length=3, description="Blob container name.")
    account_url: str = Field(
        default="", description="https://<account>.blob.core.windows.net, for ambient credentials."
    )
    endpoint: str = Field(
        default="",
        description="Blob endpoint of an emulator or private endpoint "
        "(http://127.0.0.1:10000/devstoreaccount1); when set it replaces the connection "
        "string's BlobEndpoint and accountUrl.",
    )


class FileSettings(_Model):
    path: str = Field(
        default="./az-agent-data/bucket", min_length=1, description="Directory holding the objects."
    )


class RetrySettings(_Model):
    attempts: int = Field(
        default=6, ge=1, le=100, description="Tries per request, first one included."
    )
    base_delay_seconds: float = Field(default=0.1, gt=0, description="First backoff ceiling.")
    max_delay_seconds: float = Field(default=5.0, gt=0, description="Cap of the backoff ceiling.")

    @model_validator(mode="after")
    def _cap_above_base(self) -> RetrySettings:
        if self.max_delay_seconds < self.base_delay_seconds:
            raise ValueError("maxDelaySeconds must be >= baseDelaySeconds")
        return self


class CloudStorageSettings(_Model):
    type: StorageType = Field(description="s3 | gcs | azure | file")
    use_secret: bool = Field(
        default=True,
        description="Read credentials from the mounted secret; false: ambient identity.",
    )
    secret_name: str = Field(
        default="cloud-storage-secret", description="Secret directory name under secretsDir."
    )
    prefix: str = Field(default="", description="Key prefix inside the bucket.")
    s3: S3Settings = Field(default_factory=S3Settings)
    gcs: GcsSettings = Field(default_factory=GcsSettings)
    azure: AzureSettings = Field(default_factory=AzureSettings)
    file: FileSettings = Field(default_factory=FileSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    part_size_mib: int = Field(
        default=8, ge=5, le=512, description="Part size of multipart/block/resumable uploads, MiB."
    )


class StorageSecrets(_Model):
    """Credentials read from ``<secretsDir>/<secretName>/<key>``; never logged or printed."""

    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    connection_string: SecretStr | None = None
