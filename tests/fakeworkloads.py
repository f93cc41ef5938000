"""An in-memory :class:`WorkloadScaler`: workloads with desired and ready counts, no cluster.

Nothing becomes ready by itself. ``kubelet_step`` (or :meth:`FakeWorkloads.mark_ready`) plays
the kubelet: with ``kubelet_step=n`` every list brings each workload's ready count ``n`` closer
to its desired count, so a poller sees readiness arrive over several rounds.
"""

from __future__ import annotations

import dataclasses

from az_agent.drivers.errors import NotFound, Unavailable
from az_agent.drivers.kubernetes.base import Workload, WorkloadKind, WorkloadScaler


class FakeWorkloads(WorkloadScaler):
    def __init__(self, *, kubelet_step: int = 0) -> None:
        self.items: dict[tuple[str, WorkloadKind, str], Workload] = {}
        self.kubelet_step = kubelet_step
        self.scaled: list[tuple[WorkloadKind, str, int]] = []
        self.lists = 0
        self.down = 0
        """Answer this many next calls with ``Unavailable``."""
        self.closed = False

    def add(
        self,
        kind: WorkloadKind,
        name: str,
        replicas: int,
        *,
        ready: int | None = None,
        namespace: str = "kfuse",
        labels: dict[str, str] | None = None,
    ) -> None:
        self.items[(namespace, kind, name)] = Workload(
            namespace, kind, name, replicas, replicas if ready is None else ready, labels or {}
        )

    def get(self, kind: WorkloadKind, name: str, namespace: str = "kfuse") -> Workload:
        return self.items[(namespace, kind, name)]

    def mark_ready(self, kind: WorkloadKind, name: str, namespace: str = "kfuse") -> None:
        item = self.items[(namespace, kind, name)]
        self.items[(namespace, kind, name)] = dataclasses.replace(
            item, ready_replicas=item.replicas
        )

    def _check(self) -> None:
        if self.closed:
            raise RuntimeError("FakeWorkloads is closed")
        if self.down:
            self.down -= 1
            raise Unavailable("injected: the API server does not answer")

    async def scale(self, namespace: str, kind: WorkloadKind, name: str, replicas: int) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        self._check()
        key = (namespace, kind, name)
        if key not in self.items:
            raise NotFound(f"{kind} {namespace}/{name} not found")
        item = self.items[key]
        ready = min(item.ready_replicas, replicas)  # pods beyond the count go away
        self.items[key] = dataclasses.replace(item, replicas=replicas, ready_replicas=ready)
        self.scaled.append((kind, name, replicas))

    async def get_replicas(self, namespace: str, kind: WorkloadKind, name: str) -> int:
        self._check()
        try:
            return self.items[(namespace, kind, name)].replicas
        except KeyError:
            raise NotFound(f"{kind} {namespace}/{name} not found") from None

    async def list_workloads(self, namespace: str, label_selector: str = "") -> list[Workload]:
        """Selectors of ``key=value`` requirements only."""
        self._check()
        self.lists += 1
        if self.kubelet_step:
            for key, item in self.items.items():
                ready = min(item.replicas, item.ready_replicas + self.kubelet_step)
                self.items[key] = dataclasses.replace(item, ready_replicas=ready)
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part.strip())
        found = [
            item
            for (ns, _, _), item in self.items.items()
            if ns == namespace and all(item.labels.get(k) == v for k, v in wanted.items())
        ]
        kinds = list(WorkloadKind)
        return sorted(found, key=lambda w: (kinds.index(w.kind), w.name))

    async def close(self) -> None:
        self.closed = True
