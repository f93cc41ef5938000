"""Kubernetes: scaling a zone's workloads and reaching the other zone's agent via the API server.

Only the interface is imported here; ``kubernetes_asyncio`` loads with
:mod:`~az_agent.drivers.kubernetes.workloads` or :mod:`~az_agent.drivers.kubernetes.service_proxy`.
"""

from __future__ import annotations

from az_agent.drivers.kubernetes.base import Workload, WorkloadKind, WorkloadScaler

__all__ = ["Workload", "WorkloadKind", "WorkloadScaler"]
