"""The lease record and its settings: what ``<zone>/lease.json`` holds and how it is timed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from az_agent.state.errors import LeaseCorrupted

MIN_WRITE_SPACING = 1.0
"""The shortest election round: GCS allows about one write a second to one object (the
spacing between two writes themselves is the store's ``write_spacing``)."""


class LeaseState(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    """Given up on clean shutdown: anyone may take it at once."""
    PAUSED = "paused"
    """Handed over by ``/pause``: taken at once, but only by an explicit ``take_over``."""


class LeaseSettings(BaseModel):
    """Timing of the lease, in the spirit of Kubernetes leader election (15 s / 10 s / 2 s)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    ttl_seconds: float = Field(
        default=15.0, gt=0, description="A lease unchanged this long (observer's clock) is expired."
    )
    renew_deadline_seconds: float = Field(
        default=10.0,
        gt=0,
        description="The holder stops writing when it has not renewed this long.",
    )
    retry_period_seconds: float = Field(
        default=2.0,
        ge=MIN_WRITE_SPACING,
        description="Pause between election rounds; >= 1 s keeps GCS at one write per second.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LeaseSettings:
        if not self.ttl_seconds > self.renew_deadline_seconds > self.retry_period_seconds:
            raise ValueError(
                "lease timing must satisfy ttlSeconds > renewDeadlineSeconds > "
                f"retryPeriodSeconds, got {self.ttl_seconds} / {self.renew_deadline_seconds} "
                f"/ {self.retry_period_seconds}"
            )
        return self


class LeaseRecord(BaseModel):
    """The JSON in ``lease.json``. Wall-clock fields are for operators only: expiry is judged
    from how long the object's version stays unchanged, on the observer's monotonic clock."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True
    )

    holder: str
    zone: str
    epoch: int = Field(ge=1)
    ttl_seconds: float = Field(gt=0)
    renew_deadline_seconds: float = Field(gt=0)
    state: LeaseState
    acquired_at: datetime
    renewed_at: datetime
    nonce: str = Field(description="Fresh per write: S3 ETags repeat for identical bytes.")

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> LeaseRecord:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise LeaseCorrupted(f"{key}: not a lease record: {exc}") from exc


@dataclass(frozen=True, slots=True)
class LeaseObservation:
    """One read of the lease, with how long its version has stayed unchanged as seen here."""

    record: LeaseRecord | None
    version: str | None
    seconds_unchanged: float

    @property
    def is_expired(self) -> bool:
        """An active lease whose version did not move for the TTL written in it."""
        return (
            self.record is not None
            and self.record.state is LeaseState.ACTIVE
            and self.seconds_unchanged >= self.record.ttl_seconds
        )

    @property
    def is_live(self) -> bool:
        """Active and not expired: someone may be writing under it right now."""
        return (
            self.record is not None
            and self.record.state is LeaseState.ACTIVE
            and not self.is_expired
        )


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """A snapshot for ``/status`` and metrics."""

    zone: str
    holder_id: str
    is_leader: bool
    epoch: int | None
    """The epoch this agent holds or last held; None if it never held this lease."""
    seconds_since_renewal: float | None
    record_holder: str | None
    record_epoch: int | None
    record_state: LeaseState | None
    seconds_unchanged: float | None
    acquired_at: datetime | None
    renewed_at: datetime | None
