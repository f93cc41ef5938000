"""Scaling the workloads of a zone: standby clusters run with few or no replicas.

A cold standby keeps its Pinot and PostgreSQL scaled down to save cost; activation may scale
them up first. :class:`WorkloadScaler` is the interface, so the failover can be tested without
a cluster and the implementation stays a thin layer over the ``scale`` subresource.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from az_agent.drivers.resource import AsyncResource


class WorkloadKind(enum.StrEnum):
    """The kinds that have a ``scale`` subresource in ``apps/v1``."""

    DEPLOYMENT = "Deployment"
    STATEFULSET = "StatefulSet"


@dataclass(frozen=True, slots=True)
class Workload:
    """A scalable workload: desired (``replicas``) and ready replica counts, and its labels."""

    namespace: str
    kind: WorkloadKind
    name: str
    replicas: int
    ready_replicas: int
    labels: Mapping[str, str] = field(default_factory=dict)


class WorkloadScaler(AsyncResource):
    """Reads and sets replica counts; usable as an async context manager that closes it.

    Errors are those of :mod:`az_agent.drivers.errors`: ``NotFound`` (no such workload),
    ``PermissionDenied`` (RBAC refused the verb), ``Misconfigured`` (credentials refused, invalid
    request, no usable cluster configuration), ``Unavailable`` (API server unreachable, timed out,
    5xx or throttled; safe to retry: every call here is idempotent). Nothing is retried inside
    but a 409 Conflict of :meth:`scale`, which a concurrent writer of the object causes.
    """

    @abc.abstractmethod
    async def scale(self, namespace: str, kind: WorkloadKind, name: str, replicas: int) -> None:
        """Set the desired replica count through the ``scale`` subresource.

        Idempotent (setting the current count is a no-op) and returns once the API server has
        recorded it, not once pods are ready: poll :meth:`list_workloads` for readiness.
        ``ValueError`` for a negative count, before anything is sent.
        """

    @abc.abstractmethod
    async def get_replicas(self, namespace: str, kind: WorkloadKind, name: str) -> int:
        """The desired replica count (``spec.replicas`` of the scale subresource)."""

    @abc.abstractmethod
    async def list_workloads(self, namespace: str, label_selector: str = "") -> list[Workload]:
        """Deployments then StatefulSets of ``namespace`` matching ``label_selector``
        (Kubernetes syntax, e.g. ``app.kubernetes.io/part-of=kfuse,tier!=ui``), each sorted
        by name. An unknown namespace yields an empty list, as the API does."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent; the scaler must not be used afterwards."""
