"""Deployments and StatefulSets scaled through their ``scale`` subresource.

The ``scale`` subresource (``autoscaling/v1`` Scale) rather than a patch of the workload: it
needs only the ``deployments/scale`` / ``statefulsets/scale`` RBAC verbs, touches nothing but
the replica count, and is what ``kubectl scale`` and autoscalers use. The patch is a JSON merge
patch ``{"spec": {"replicas": N}}``, which means the same for every kind and server version.

Why a patch and not a read-modify-replace of the Scale carrying its ``resourceVersion``: the
count we set is absolute, never derived from the one read, so an optimistic-concurrency
precondition would protect nothing and only add a round trip and conflicts to retry. Without a
``resourceVersion`` the API server re-applies the patch to the newest object itself when a
concurrent write (the controller's status update, an autoscaler) lands first. It gives up with
409 Conflict after a few such rounds on a very busy object; :meth:`KubernetesWorkloads.scale`
then sends the same patch again, at most :data:`CONFLICT_ATTEMPTS` times in all (idempotent:
the same absolute count).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Self

from kubernetes_asyncio.client import ApiClient, AppsV1Api

from az_agent.drivers.errors import PreconditionFailed
from az_agent.drivers.kubernetes.base import Workload, WorkloadKind, WorkloadScaler
from az_agent.drivers.kubernetes.client import (
    DEFAULT_TIMEOUT,
    KubernetesConnection,
    open_api_client,
    translate_errors,
)

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
DEFAULT_PAGE_SIZE = 500
CONFLICT_ATTEMPTS = 5
"""Patches sent in all when the API server answers 409 Conflict (see the module docstring)."""
CONFLICT_DELAY = 0.05
"""Seconds before the first resend, doubled for each next one."""

# Method name suffixes of AppsV1Api per kind, e.g. ``read_namespaced_<suffix>_scale``.
_SUFFIX = {WorkloadKind.DEPLOYMENT: "deployment", WorkloadKind.STATEFULSET: "stateful_set"}


class KubernetesWorkloads(WorkloadScaler):
    """:class:`WorkloadScaler` on a real API server; owns (and closes) ``api_client``."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self._client = api_client
        self._apps = AppsV1Api(api_client)
        self._timeout = timeout
        self._page_size = page_size
        self._closed = False

    @classmethod
    async def connect(cls, connection: KubernetesConnection) -> Self:
        return cls(await open_api_client(connection), timeout=connection.timeout)

    def _method(self, verb: str, kind: WorkloadKind, subresource: str = "") -> Any:
        """``AppsV1Api.<verb>_namespaced_<kind>[_<subresource>]``, refused once closed."""
        if self._closed:
            raise RuntimeError("KubernetesWorkloads is closed")
        name = f"{verb}_namespaced_{_SUFFIX[WorkloadKind(kind)]}"
        return getattr(self._apps, f"{name}_{subresource}" if subresource else name)

    async def scale(self, namespace: str, kind: WorkloadKind, name: str, replicas: int) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        patch = self._method("patch", kind, "scale")
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                with translate_errors(f"scale {kind} {namespace}/{name} to {replicas}"):
                    await patch(
                        name,
                        namespace,
                        {"spec": {"replicas": replicas}},
                        _content_type=MERGE_PATCH,
                        _request_timeout=self._timeout,
                    )
                break
            except PreconditionFailed as exc:
                if attempt == CONFLICT_ATTEMPTS:
                    raise PreconditionFailed(f"{exc} ({attempt} attempts)") from exc
                log.info("scale of %s %s/%s met a conflict, resending", kind, namespace, name)
                await asyncio.sleep(CONFLICT_DELAY * 2 ** (attempt - 1))
        log.info("scaled %s %s/%s to %d replicas", kind, namespace, name, replicas)

    async def get_replicas(self, namespace: str, kind: WorkloadKind, name: str) -> int:
        read = self._method("read", kind, "scale")
        with translate_errors(f"read scale of {kind} {namespace}/{name}"):
            scale = await read(name, namespace, _request_timeout=self._timeout)
        # autoscaling/v1 ScaleSpec.replicas is omitempty: a workload scaled to zero has none.
        return int(scale.spec.replicas or 0) if scale.spec is not None else 0

    async def list_workloads(self, namespace: str, label_selector: str = "") -> list[Workload]:
        found: list[Workload] = []
        for kind in WorkloadKind:
            items = await self._list_all(namespace, kind, label_selector)
            found.extend(sorted(items, key=lambda w: w.name))
        return found

    async def _list_all(self, namespace: str, kind: WorkloadKind, selector: str) -> list[Workload]:
        """Every page of one kind's list (``limit`` / ``continue``)."""
        list_call = self._method("list", kind)
        workloads: list[Workload] = []
        token: str | None = None
        while True:
            with translate_errors(f"list {kind}s in {namespace}"):
                page = await list_call(
                    namespace,
                    label_selector=selector or None,
                    limit=self._page_size,
                    _continue=token,
                    _request_timeout=self._timeout,
                )
            workloads.extend(_workload(namespace, kind, item) for item in page.items)
            token = page.metadata._continue if page.metadata is not None else None
            if not token:
                return workloads

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()


def _workload(namespace: str, kind: WorkloadKind, item: Any) -> Workload:
    spec_replicas = item.spec.replicas if item.spec is not None else None
    ready = item.status.ready_replicas if item.status is not None else None
    return Workload(
        namespace=item.metadata.namespace or namespace,
        kind=kind,
        name=str(item.metadata.name),
        # apps/v1 defaults an unset spec.replicas to 1 on the server.
        replicas=1 if spec_replicas is None else int(spec_replicas),
        ready_replicas=int(ready or 0),
        labels=dict(item.metadata.labels or {}),
    )
