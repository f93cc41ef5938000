"""A small in-process Kubernetes API server: exactly the endpoints the drivers use.

The scale paths also run against a real kube-apiserver 1.20 (``test_real_apiserver.py``,
``test_agent_rbac.py``); this fake stays for the exact requests the drivers send, injected
faults, and above all the service-proxy paths of ``/activate?namespace=``, which the real server
cannot exercise (it refuses to proxy to loopback endpoints). Its answers are the real server's,
checked against it: status, reason and message of 401, 403 (the object named
``<service>:<port>`` for the proxy), 404 (``deployments/scale.apps`` on a read of a Deployment's
scale, ``<plural>.apps`` otherwise; ``services "<name>"``), 503 (``no endpoints available for
service "<name>"``, ``no service port <port> found for service "<name>"``) and the 400 of a bad
selector. It serves, with the real paths and JSON shapes:

* ``GET /apis/apps/v1/namespaces/{ns}/{deployments|statefulsets}`` (``labelSelector``, ``limit``,
  ``continue``): ``DeploymentList`` / ``StatefulSetList``, items without kind/apiVersion.
* ``GET`` and ``PATCH`` of ``.../{name}/scale``: ``autoscaling/v1`` Scale, whose
  ``spec.replicas`` is omitted at zero as the real (omitempty) field is; the patch must be a
  merge or strategic-merge patch and is validated (``spec.replicas`` >= 0).
* ``* /api/v1/namespaces/{ns}/services/{name}:{port}/proxy/{path}``: forwarded to a registered
  upstream with ``Authorization`` removed, as the API server does after authenticating.
* Errors as ``v1.Status`` bodies: 401 (bad token), 403 (a deny rule, with the real RBAC message),
  404, 400 (bad selector), 415, 422, 503 (no endpoints, dial failure), and injected faults.

Left out: RBAC beyond explicit deny rules, resourceVersion preconditions and 409 conflicts
(but for injected ones: ``fail_next(409, "Conflict")``),
controllers (``status`` never follows ``spec``; tests set it), watch, field selectors, JSON
patch and server-side apply, content types other than JSON, Namespace objects (an unknown
namespace is simply empty), named service ports, TLS, audit, and every other resource.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

RESOURCES = {"deployments": "Deployment", "statefulsets": "StatefulSet"}
MERGE_TYPES = {"application/merge-patch+json", "application/strategic-merge-patch+json"}
USER = "system:serviceaccount:kfuse:az-service"
_TIMESTAMP = "2026-11-22T00:00:00Z"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    headers: dict[str, str]


def status_response(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics; ``ValueError`` for a selector it cannot parse."""
    for part in re.split(r",(?![^()]*\))", selector) if selector.strip() else []:
        found = _REQUIREMENT.match(part)
        if found is None or (found["neg"] and (found["op"] or found["setop"])):
            raise ValueError(f"unable to parse requirement: {part.strip()!r}")
        key, present = found["key"], found["key"] in labels
        if found["op"] in ("=", "=="):
            ok = labels.get(key) == found["value"]
        elif found["op"] == "!=":
            ok = labels.get(key) != found["value"]
        elif found["setop"]:
            values = {v.strip() for v in found["values"].split(",")}
            ok = (
                labels.get(key) in values
                if found["setop"] == "in"
                else labels.get(key) not in values
            )
        else:
            ok = present != bool(found["neg"])
        if not ok:
            return False
    return True


@dataclass
class FakeApiServer:
    """Start with :meth:`start`, stop with :meth:`stop`; ``url`` and ``token`` reach it."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    url: str = ""
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    services: dict[tuple[str, str, str], str | None] = field(default_factory=dict)
    denied: set[tuple[str, str, str]] = field(default_factory=set)
    faults: list[tuple[int, str]] = field(default_factory=list)
    delay: float = 0.0
    requests: list[Recorded] = field(default_factory=list)
    _version: int = 100

    async def start(self) -> None:
        self._released = asyncio.Event()
        app = web.Application(middlewares=[self._front])
        base = "/apis/apps/v1/namespaces/{ns}/{resource}"
        app.router.add_get(base, self._list)
        app.router.add_get(base + "/{name}/scale", self._get_scale)
        app.router.add_patch(base + "/{name}/scale", self._patch_scale)
        app.router.add_route(
            "*", "/api/v1/namespaces/{ns}/services/{svc}/proxy/{path:.*}", self._proxy
        )
        app.router.add_get("/version", self._version_info)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        self._upstream = aiohttp.ClientSession(auto_decompress=False)

    async def stop(self) -> None:
        self._released.set()
        await self._upstream.close()
        await self._runner.cleanup()

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def add_workload(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        replicas: int,
        ready: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Store a Deployment or StatefulSet as the API server would return it."""
        resource = {v: k for k, v in RESOURCES.items()}[kind]
        selector = {"app": name}
        obj: dict[str, Any] = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "generation": 1,
                "creationTimestamp": _TIMESTAMP,
                "labels": {**selector, **(labels or {})},
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": selector},
                    "spec": {"containers": [{"name": name, "image": f"example/{name}:1"}]},
                },
            },
            "status": {"replicas": replicas, "readyReplicas": replicas if ready is None else ready},
        }
        if kind == "StatefulSet":
            obj["spec"]["serviceName"] = name
        if not obj["status"]["readyReplicas"]:
            del obj["status"]["readyReplicas"]  # omitempty, as the real field
        self.objects[(resource, namespace, name)] = obj
        return obj

    def add_service(self, namespace: str, name: str, port: int | str, upstream: str | None) -> None:
        """A Service whose endpoint is ``upstream`` (``None``: no ready endpoints)."""
        self.services[(namespace, name, str(port))] = upstream

    def deny(self, verb: str, resource: str, namespace: str) -> None:
        """Make RBAC refuse ``verb`` on ``resource`` (e.g. ``deployments/scale``)."""
        self.denied.add((verb, resource, namespace))

    def fail_next(self, code: int, reason: str) -> None:
        """Answer the next request with this error instead of serving it."""
        self.faults.append((code, reason))

    async def _version_info(self, request: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"})

    @web.middleware
    async def _front(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "")
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                dict(request.query),
                content_type,
                json.loads(raw) if raw and "json" in content_type else raw,
                dict(request.headers),
            )
        )
        if self.delay:  # a hung server; released early by stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), self.delay)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return status_response(401, "Unauthorized", "Unauthorized")
        if self.faults:
            code, reason = self.faults.pop(0)
            return status_response(code, reason, f"injected {reason}")
        return await handler(request)  # type: ignore[no-any-return]

    def _forbidden(
        self, verb: str, resource: str, ns: str, name: str | None
    ) -> web.Response | None:
        if (verb, resource, ns) not in self.denied:
            return None
        base = resource.split("/")[0]
        group = "" if base == "services" else "apps"
        what = f'{base}.{group} "{name}"' if group else f'{base} "{name}"'
        if name is None:
            what = f"{base}.{group}" if group else base
        message = (
            f'{what} is forbidden: User "{USER}" cannot {verb} resource "{resource}" '
            f'in API group "{group}" in the namespace "{ns}"'
        )
        return status_response(
            403, "Forbidden", message, {"name": name or "", "group": group, "kind": base}
        )

    def _workload(self, request: web.Request) -> tuple[str, str, str] | web.Response:
        ns, resource, name = (request.match_info[k] for k in ("ns", "resource", "name"))
        if resource not in RESOURCES:
            return status_response(
                404, "NotFound", "the server could not find the requested resource"
            )
        verb = "patch" if request.method == "PATCH" else "get"
        if denied := self._forbidden(verb, f"{resource}/scale", ns, name):
            return denied
        if (resource, ns, name) not in self.objects:
            # 1.20 names the subresource only when reading a Deployment's scale.
            kind = f"{resource}/scale" if (verb, resource) == ("get", "deployments") else resource
            details = {"name": name, "group": "apps", "kind": kind}
            return status_response(404, "NotFound", f'{kind}.apps "{name}" not found', details)
        return resource, ns, name

    def _scale(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        replicas = obj["spec"].get("replicas", 1)
        selector = ",".join(
            f"{k}={v}" for k, v in sorted(obj["spec"]["selector"]["matchLabels"].items())
        )
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            },
            "spec": {"replicas": replicas} if replicas else {},
            "status": {"replicas": obj["status"].get("replicas", 0), "selector": selector},
        }

    async def _get_scale(self, request: web.Request) -> web.Response:
        found = self._workload(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response(self._scale(self.objects[found]))

    async def _patch_scale(self, request: web.Request) -> web.Response:
        found = self._workload(request)
        if isinstance(found, web.Response):
            return found
        if request.content_type not in MERGE_TYPES:
            message = (
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, "
                "application/apply-patch+yaml"
            )
            return status_response(415, "UnsupportedMediaType", message)
        patch = await request.json()
        replicas = (patch.get("spec") or {}).get("replicas") if isinstance(patch, dict) else None
        name = found[2]
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            message = (
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                f"{json.dumps(replicas)}: must be greater than or equal to 0"
            )
            return status_response(
                422, "Invalid", message, {"name": name, "group": "autoscaling", "kind": "Scale"}
            )
        obj = self.objects[found]
        if obj["spec"]["replicas"] != replicas:
            obj["spec"]["replicas"] = replicas
            obj["metadata"]["generation"] += 1
            obj["metadata"]["resourceVersion"] = self._next_version()
        return web.json_response(self._scale(obj))

    async def _list(self, request: web.Request) -> web.Response:
        ns, resource = request.match_info["ns"], request.match_info["resource"]
        if resource not in RESOURCES:
            return status_response(
                404, "NotFound", "the server could not find the requested resource"
            )
        if denied := self._forbidden("list", resource, ns, None):
            return denied
        selector = request.query.get("labelSelector", "")
        try:
            selector_matches(selector, {})  # parse errors even when nothing is stored
            items = sorted(
                (
                    obj
                    for (res, n, _), obj in self.objects.items()
                    if res == resource
                    and n == ns
                    and selector_matches(selector, obj["metadata"]["labels"])
                ),
                key=lambda o: str(o["metadata"]["name"]),
            )
        except ValueError as exc:
            return status_response(400, "BadRequest", str(exc))
        if "continue" in request.query:
            start = json.loads(base64.b64decode(request.query["continue"]))["start"]
            items = [o for o in items if o["metadata"]["name"] > start]
        metadata: dict[str, Any] = {"resourceVersion": str(self._version)}
        limit = int(request.query.get("limit", "0"))
        if 0 < limit < len(items):
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
            token = json.dumps({"start": items[-1]["metadata"]["name"]}).encode()
            metadata["continue"] = base64.b64encode(token).decode()
        kind = RESOURCES[resource] + "List"
        return web.json_response(
            {"kind": kind, "apiVersion": "apps/v1", "metadata": metadata, "items": items}
        )

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        ns, svc, path = (request.match_info[k] for k in ("ns", "svc", "path"))
        parts = svc.split(":")
        name, port = parts[-2] if len(parts) > 1 else parts[0], parts[-1] if len(parts) > 1 else ""
        verb = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch"}.get(
            request.method, "delete"
        )
        if denied := self._forbidden(verb, "services/proxy", ns, svc):
            return denied
        ports = {p: up for (n, s, p), up in self.services.items() if (n, s) == (ns, name)}
        if not ports:
            return status_response(
                404, "NotFound", f'services "{name}" not found', {"name": name, "kind": "services"}
            )
        if port and port not in ports:
            return status_response(
                503, "ServiceUnavailable", f'no service port {port} found for service "{name}"'
            )
        upstream = ports.get(port) if port else next(iter(ports.values()))
        if upstream is None:
            return status_response(
                503, "ServiceUnavailable", f'no endpoints available for service "{name}"'
            )
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("authorization", "host", "content-length")
        }
        try:
            async with self._upstream.request(
                request.method,
                f"{upstream}/{path}",
                params=request.query,
                headers=headers,
                data=await request.read(),
            ) as reply:
                body = await reply.read()
                content_type = reply.headers.get("Content-Type", "application/octet-stream")
                return web.Response(
                    status=reply.status, body=body, headers={"Content-Type": content_type}
                )
        except aiohttp.ClientConnectorError:
            target = upstream.removeprefix("http://")
            message = (
                f"error trying to reach service: dial tcp {target}: connect: connection refused"
            )
            return status_response(503, "ServiceUnavailable", message)
