"""The agent's configuration: one YAML file keyed like the Helm values, overridable by env vars.

The file has two top-level sections, ``global`` (shared by the platform's components) and
``az-service`` (this agent). ``az-service.config.cloudStorage``, when present, is merged over
``global.cloudStorage`` and takes precedence for the agent.

Environment overrides: ``AZ_AGENT__`` followed by the key path, path elements joined by ``__``.
Elements match keys case-insensitively, ignoring ``-`` and ``_``; values are parsed as YAML
scalars or flow collections. Examples::

    AZ_AGENT__GLOBAL__CLOUDSTORAGE__TYPE=s3
    AZ_AGENT__GLOBAL__CLOUDSTORAGE__S3__BUCKET=my-dr-bucket
    AZ_AGENT__AZ_SERVICE__CONFIG__ZONE=az2
    AZ_AGENT__AZ_SERVICE__CONFIG__POSTGRES__DATABASES=[configdb, orchestratordb]
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import Field, ValidationError, model_validator

from az_agent.drivers.alerts import Matcher
from az_agent.drivers.alerts.matchers import check_matchers
from az_agent.drivers.pinot.config import PinotSettings
from az_agent.drivers.postgres.config import PostgresSettings
from az_agent.drivers.settings_base import SettingsModel
from az_agent.drivers.storage.config import CloudStorageSettings

ENV_PREFIX = "AZ_AGENT__"
EMBEDDED_DEFAULTS: dict[str, Any] = {
    "global": {"cloudStorage": {"type": "file", "file": {"path": "./az-agent-data/bucket"}}},
    "az-service": {"config": {"zone": "az1", "secretsDir": "./az-agent-data/secrets"}},
}
"""What ``az-agent`` runs on when no file is given: a local directory as the bucket."""
ZONE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line naming the key and problem."""


class HttpSettings(SettingsModel):
    host: str = Field(default="0.0.0.0", description="Address the HTTP API listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP API.")
    token_file: str = Field(
        default="", description="File holding the bearer token for POSTs; '' = loopback-only POSTs."
    )
    tls_cert_file: str = Field(
        default="", description="PEM certificate; TLS is on when set with a key."
    )
    tls_key_file: str = Field(default="", description="PEM private key of tlsCertFile.")
    trust_loopback: bool = Field(
        default=True,
        description="Without a token, accept POSTs from loopback clients (kubectl "
        "port-forward); false refuses them too, for pods whose sidecars make every client local.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tlsCertFile and tlsKeyFile must be set together")
        return self


class LeaseConfig(SettingsModel):
    ttl_seconds: float = Field(
        default=15, gt=0, description="How long an unrenewed lease stays valid."
    )
    renew_deadline_seconds: float = Field(
        default=10,
        gt=0,
        description="The holder stops writing when it could not renew for this long.",
    )
    retry_period_seconds: float = Field(
        default=2, ge=1, description="Cadence of acquire/renew attempts (>= 1 s: GCS write limit)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> LeaseConfig:
        if not self.ttl_seconds > self.renew_deadline_seconds > self.retry_period_seconds:
            raise ValueError(
                "need ttlSeconds > renewDeadlineSeconds > retryPeriodSeconds, got "
                f"{self.ttl_seconds} / {self.renew_deadline_seconds} / "
                f"{self.retry_period_seconds}"
            )
        return self


class SilenceMatcher(SettingsModel):
    name: str = Field(description="Label name.")
    value: str = Field(description="Label value or regex.")
    is_regex: bool = Field(default=False, description="Match value as a regular expression.")
    is_equal: bool = Field(default=True, description="False negates the match.")


class AlertmanagerSettings(SettingsModel):
    url: str = Field(default="", description="Alertmanager base URL; '' = no silencing.")
    matchers: list[SilenceMatcher] = Field(
        default_factory=list,
        description="Matchers of the silences this agent creates; none = every alert "
        '(alertname=~".+"). Checked at start-up against the rules of Alertmanager.',
    )
    silence_hours: float = Field(
        default=12, gt=0, description="End time of each silence, so a forgotten one expires."
    )
    created_by: str = Field(default="az-agent", description="createdBy of the silences.")
    timeout_seconds: float = Field(default=10, gt=0, description="Per-request timeout.")
    token_secret: str = Field(
        default="", description="Secret under secretsDir with key 'token' (bearer); '' = none."
    )

    @model_validator(mode="after")
    def _acceptable_matchers(self) -> AlertmanagerSettings:
        """Refuse at start-up what Alertmanager would refuse in the middle of a failover."""
        check_matchers([Matcher(m.name, m.value, m.is_regex, m.is_equal) for m in self.matchers])
        return self


class KubernetesSettings(SettingsModel):
    """How ``/activate?namespace=`` reaches the source agent through the API server."""

    enabled: bool = Field(default=False, description="Allow the namespace parameter.")
    host: str = Field(default="", description="API server URL; '' = in-cluster or kubeconfig.")
    kubeconfig: str = Field(default="", description="Path of a kubeconfig; '' = default.")
    context: str = Field(default="", description="kubeconfig context; '' = current.")
    source_service: str = Field(
        default="az-service", description="Service of the source agent, in that namespace."
    )
    source_port: int = Field(
        default=8080, ge=1, le=65535, description="Port of that Service (the agent's HTTP API)."
    )
    source_token_secret: str = Field(
        default="",
        description="Secret under secretsDir with key 'token': the source agent's API token, "
        "relayed to it as X-Az-Agent-Token (the API server drops Authorization); '' = none.",
    )
    timeout_seconds: float = Field(default=600, gt=0, description="Wait for the source pause.")


class AutomaticFailoverSettings(SettingsModel):
    """The standby runs the handshake itself once the source zone is gone or sick.

    Gone: its zone lease has not changed for its TTL plus ``graceSeconds``. Sick: its agent
    has published ``unhealthy`` in ``<source>/health.json`` for ``unhealthySeconds``. Never
    while the source is paused (a planned handshake), never while this zone is unhealthy,
    never back to a zone this agent took over automatically, at most once per cooldown.
    """

    enabled: bool = Field(default=False, description="Activate without an operator.")
    source_zone: str = Field(default="", description="The zone this standby takes over.")
    grace_seconds: float = Field(
        default=30, ge=0, description="Wait this long beyond the lease TTL before acting."
    )
    unhealthy_seconds: float = Field(
        default=120,
        gt=0,
        description="Take over once the source has published itself unhealthy this long.",
    )
    cooldown_minutes: float = Field(
        default=60, ge=0, description="At most one automatic activation per this many minutes."
    )

    @model_validator(mode="after")
    def _source_named(self) -> AutomaticFailoverSettings:
        if self.enabled and not ZONE_PATTERN.match(self.source_zone):
            raise ValueError("sourceZone must name the zone to take over when enabled")
        return self


class StandbySettings(SettingsModel):
    """What a standby zone keeps ready (DESIGN.md, "Standby modes")."""

    mode: Literal["cold", "warm"] = Field(
        default="cold",
        description="cold: nothing runs but the agent; warm: follow the primary's log "
        "(tables, segments, shadow databases) so an activation moves only the delta.",
    )
    follow_interval_seconds: float = Field(
        default=30, gt=0, description="Warm: how often the standby follows the primary's log."
    )


class WorkloadRef(SettingsModel):
    """One workload a cold zone scales from zero on activation."""

    kind: Literal["Deployment", "StatefulSet"]
    name: str = Field(min_length=1)
    replicas: int | None = Field(
        default=None,
        ge=1,
        description="Replicas on activation; None = those recorded when the zone was active.",
    )


class ColdStandbySettings(SettingsModel):
    """The workloads a cold standby zone scales up from zero on activation."""

    namespace: str = Field(default="", description="'' = the agent's own namespace.")
    workloads: list[WorkloadRef] = Field(default_factory=list)
    selector: str = Field(
        default="", description="Or a label selector; replicas recorded in the bucket."
    )
    scale_down_on_pause: bool = Field(
        default=False, description="Scale the workloads to zero after a pause."
    )
    ready_timeout_seconds: float = Field(
        default=900, gt=0, description="How long an activation waits for them to be ready."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.workloads or self.selector)


class RehydrationSettings(SettingsModel):
    concurrency: int = Field(default=8, ge=1, le=256, description="Parallel segment uploads.")
    batch_size: int = Field(default=50, ge=1, description="Segments per rehydration batch.")


class BucketRetentionSettings(SettingsModel):
    """How the bucket follows Pinot's retention (PostgreSQL dumps: ``postgres.retention``)."""

    deleted_segment_grace_hours: float = Field(
        default=24,
        ge=0,
        description="Keep the objects of a segment deleted from Pinot this long after its "
        "segment-deleted entry (rehydration as of an earlier time can still restore it).",
    )
    orphan_grace_hours: float = Field(
        default=6,
        gt=0,
        description="Remove objects no log entry references once older than this (uploads of "
        "crashed or fenced writers); longer than any upload takes to get its entry.",
    )
    keep_checkpoints: int = Field(
        default=3,
        ge=1,
        description="Catalog checkpoints kept; the log entries older than the oldest are removed.",
    )
    interval_minutes: float = Field(
        default=60, gt=0, description="How often the leader runs retention on the bucket."
    )


class ServiceConfig(SettingsModel):
    """``az-service.config``: everything specific to this agent."""

    zone: str | None = Field(
        default=None,
        description="Zone id: the backup path in the bucket. Default orgId-release-ns.",
    )
    role: Literal["active", "standby"] = Field(
        default="active",
        description="Role taken while the bucket holds no lease for this zone yet.",
    )
    group: str = Field(
        default="default",
        pattern=ZONE_PATTERN.pattern,
        description="Failover group: the zones that fail over to each other share one primary "
        "record, primary/<group>.json.",
    )
    backup_interval_minutes: float = Field(
        default=60, gt=0, description="How often PostgreSQL is dumped to the bucket."
    )
    secrets_dir: str = Field(
        default="/var/run/secrets/az-agent", description="Secrets as files: <dir>/<secret>/<key>."
    )
    cloud_storage: CloudStorageSettings | None = Field(
        default=None, description="Override of global.cloudStorage for this agent."
    )
    http: HttpSettings = Field(default_factory=HttpSettings)
    lease: LeaseConfig = Field(default_factory=LeaseConfig)
    pinot: PinotSettings = Field(default_factory=PinotSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    alertmanager: AlertmanagerSettings = Field(default_factory=AlertmanagerSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    automatic_failover: AutomaticFailoverSettings = Field(default_factory=AutomaticFailoverSettings)
    standby: StandbySettings = Field(default_factory=StandbySettings)
    cold_standby: ColdStandbySettings = Field(default_factory=ColdStandbySettings)
    rehydration: RehydrationSettings = Field(default_factory=RehydrationSettings)
    retention: BucketRetentionSettings = Field(default_factory=BucketRetentionSettings)


class AzServiceSection(SettingsModel):
    config: ServiceConfig = Field(default_factory=ServiceConfig)


class GlobalSection(SettingsModel):
    cloud_storage: CloudStorageSettings | None = Field(
        default=None, description="The bucket shared by the platform's components."
    )
    org_id: str = Field(default="", description="Organisation id; part of the default zone id.")
    release_name: str = Field(
        default="", description="Helm release name; part of the default zone id."
    )
    namespace: str = Field(
        default="", description="Kubernetes namespace; part of the default zone id."
    )


class AgentConfig(SettingsModel):
    global_: GlobalSection = Field(
        default_factory=GlobalSection,
        alias="global",
    )
    az_service: AzServiceSection = Field(
        default_factory=AzServiceSection,
        alias="az-service",
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_storage_override(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        override = _dig(data, "az-service", "config", "cloudStorage")
        if isinstance(override, dict):
            base = _dig(data, "global", "cloudStorage") or {}
            if isinstance(base, dict):
                data["az-service"]["config"]["cloudStorage"] = _deep_merge(base, override)
        return data

    @model_validator(mode="after")
    def _storage_and_zone(self) -> AgentConfig:
        if self.service.cloud_storage is None and self.global_.cloud_storage is None:
            raise ValueError("global.cloudStorage: required (type: s3 | gcs | azure | file)")
        zone = self.zone
        automatic = self.service.automatic_failover
        if automatic.enabled and automatic.source_zone == zone:
            raise ValueError("az-service.config.automaticFailover.sourceZone: is this zone")
        if not ZONE_PATTERN.match(zone):
            raise ValueError(
                f"az-service.config.zone: {zone!r} must be 1-63 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        return self

    @property
    def service(self) -> ServiceConfig:
        return self.az_service.config

    @property
    def storage(self) -> CloudStorageSettings:
        """The storage this agent uses: the az-service override, else the global one."""
        storage = self.service.cloud_storage or self.global_.cloud_storage
        assert storage is not None, "checked by the validator"
        return storage

    @property
    def zone(self) -> str:
        """The configured zone, else ``<orgId>-<releaseName>-<namespace>`` when all are set."""
        if self.service.zone:
            return self.service.zone
        parts = (self.global_.org_id, self.global_.release_name, self.global_.namespace)
        if all(parts):
            return "-".join(parts)
        raise ValueError(
            "az-service.config.zone: required (or set global.orgId, global.releaseName and "
            "global.namespace to derive it)"
        )


def _dig(data: Mapping[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new tree: ``override`` merged over ``base``; neither is changed, no mapping shared
    (env overrides are then written into it, and must never reach :data:`EMBEDDED_DEFAULTS`)."""
    merged = {key: _deep_merge({}, v) if isinstance(v, Mapping) else v for key, v in base.items()}
    for key, value in override.items():
        if isinstance(value, Mapping):
            earlier = merged.get(key)
            merged[key] = _deep_merge(earlier if isinstance(earlier, Mapping) else {}, value)
        else:
            merged[key] = value
    return merged


def _normalise(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Set ``raw``'s keys from ``AZ_AGENT__...`` variables; unknown keys raise ``ConfigError``."""
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            raise ConfigError(f"{name}: names no configuration key")
        keys, leaf = _resolve_path(AgentConfig, path, name)
        value: Any = environ[name]
        if not _is_text(leaf):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"{name}: value is not valid YAML") from None
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return raw


def _is_text(annotation: Any) -> bool:
    """True for ``str`` and ``str | None`` fields, whose env values are taken verbatim."""
    if annotation is str:
        return True
    if get_origin(annotation) not in (Union, UnionType):
        return False
    return [a for a in get_args(annotation) if a is not type(None)] == [str]


def _resolve_path(
    model: type[SettingsModel], path: list[str], env_name: str
) -> tuple[list[str], Any]:
    """Map env path elements to the file's key spelling, walking the nested models.

    Returns the keys and the annotation of the field the path ends on.
    """
    keys: list[str] = []
    annotation: Any = model
    current: type[SettingsModel] | None = model
    for element in path:
        if current is None:
            raise ConfigError(f"{env_name}: '{element}' goes below a value that has no keys")
        match = None
        for field_name, field in current.model_fields.items():
            alias = field.alias or field_name
            if _normalise(alias) == _normalise(element):
                match = (alias, field.annotation)
                break
        if match is None:
            raise ConfigError(f"{env_name}: unknown key '{element}' under '{'.'.join(keys)}'")
        keys.append(match[0])
        annotation = match[1]
        current = _nested_model(annotation)
    return keys, annotation


def _nested_model(annotation: Any) -> type[SettingsModel] | None:
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, SettingsModel):
            return candidate
    return None


def _format_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def parse_config(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Validate a parsed document plus env overrides; raise ``ConfigError`` with one line."""
    data = apply_env_overrides(_deep_merge({}, raw), os.environ if environ is None else environ)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read ``path`` (``None``: :data:`EMBEDDED_DEFAULTS`) and apply env overrides."""
    raw: Any = EMBEDDED_DEFAULTS
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return parse_config(raw, environ)
