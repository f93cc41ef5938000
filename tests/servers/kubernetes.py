"""A real Kubernetes API server on 127.0.0.1: etcd, kube-apiserver and kube-controller-manager.

Kubernetes 1.20.2 built from Debian's ``kubernetes`` source package by ``scripts/kube-build.sh``
(``scripts/test.sh`` runs it) into a cache outside the repository, with Debian's etcd. Without
those binaries :meth:`KubernetesApiServer.start` raises, so a test needing the server fails (it
never skips). The API server authorizes with RBAC, serves TLS with a throwaway certificate and
knows one bearer token, the admin's (``system:masters``); service accounts get real tokens from
the TokenRequest API. The controller manager turns Deployments into ReplicaSets and pods, and
StatefulSets into pods; there is no scheduler and no kubelet, so nothing runs and nothing gets
ready on its own: :meth:`~KubernetesApiServer.mark_ready` does what a kubelet would, marking the
workload's pods Running and Ready through their ``status`` subresource, and waits until the
controllers have carried that into the workload's own status (``readyReplicas`` and the rest).
Patching the workload's status directly would not stick: its controller recomputes it from the
pods at once.

Usage (the session fixture ``kube_apiserver`` in ``tests/conftest.py`` starts one per run)::

    async def test_cold_standby(kube_apiserver: KubernetesApiServer) -> None:
        ns = await kube_apiserver.create_namespace()          # unique per call
        part_of = {"app.kubernetes.io/part-of": "kfuse"}
        await kube_apiserver.create_deployment(ns, "pinot-broker", replicas=0, labels=part_of)
        await kube_apiserver.create_statefulset(ns, "pinot-server", replicas=0, labels=part_of)
        connection = kube_apiserver.admin_connection()      # a KubernetesConnection
        async with await KubernetesWorkloads.connect(connection) as workloads:
            await workloads.scale(ns, WorkloadKind.STATEFULSET, "pinot-server", 2)
            await kube_apiserver.mark_ready(WorkloadKind.STATEFULSET, ns, "pinot-server")
        # the agent's own identity: a service account, the project's Role, a real token
        await kube_apiserver.create_service_account(ns, "az-agent")
        await kube_apiserver.apply(manifest("deploy/kubernetes/agent-role.yaml", ns))
        agent = kube_apiserver.connection(await kube_apiserver.token_for(ns, "az-agent"))
        assert await kube_apiserver.can_i("patch", "deployments.apps", subresource="scale",
                                          namespace=ns, service_account="az-agent")

Every test should work in its own namespace: the server is shared by the whole session.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from az_agent.drivers.kubernetes.base import WorkloadKind
from az_agent.drivers.kubernetes.client import KubernetesConnection
from tests.servers.process import free_port, stop_process
from tests.servers.tls import self_signed

VERSION = "1.20.2"
BUILD_SCRIPT = "scripts/kube-build.sh"
START_TIMEOUT = 90.0
BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl")
# The controllers the tests rely on; the rest (nodes, endpoints, quotas, ...) only cost CPU.
CONTROLLERS = "deployment,replicaset,statefulset,endpoint,garbagecollector,namespace,serviceaccount"
# The label every pod template of create_deployment / create_statefulset selects on.
WORKLOAD_LABEL = "az-agent.test/workload"
_PLURAL = {WorkloadKind.DEPLOYMENT: "deployments", WorkloadKind.STATEFULSET: "statefulsets"}


def cache_dir() -> Path:
    """Where ``scripts/kube-build.sh`` puts the binaries (the same rules as the script)."""
    explicit = os.environ.get("AZ_AGENT_KUBE_CACHE")
    if explicit:
        return Path(explicit)
    system = Path(f"/var/cache/az-agent/kubernetes-{VERSION}")
    if (system / "kube-apiserver").exists():
        return system
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    candidate = user / "az-agent" / f"kubernetes-{VERSION}"
    return candidate if (candidate / "kube-apiserver").exists() else system


def binaries() -> dict[str, str]:
    """Paths of the four programs; ``RuntimeError`` naming the build script when one is missing."""
    cache = cache_dir()
    found = {name: str(cache / name) for name in BINARIES if os.access(cache / name, os.X_OK)}
    etcd = shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else "")
    if etcd:
        found["etcd"] = etcd
    missing = sorted({*BINARIES, "etcd"} - set(found))
    if missing:
        raise RuntimeError(
            f"Kubernetes test binaries missing ({', '.join(missing)} in {cache} or etcd on PATH); "
            f"build them with `{BUILD_SCRIPT}` (scripts/test.sh does)"
        )
    return found


def manifest(path: str | Path, namespace: str, subject_namespace: str | None = None) -> str:
    """A YAML file of ``deploy/kubernetes/`` with every object moved into ``namespace`` and
    every ServiceAccount subject into ``subject_namespace`` (default: ``namespace``)."""
    documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    for document in documents:
        document["metadata"]["namespace"] = namespace
        for subject in document.get("subjects", []):
            if subject["kind"] == "ServiceAccount":
                subject["namespace"] = subject_namespace or namespace
    return yaml.safe_dump_all(documents)


class KubeApiError(Exception):
    """The API server refused a fixture request: its HTTP status and ``v1.Status`` body."""

    def __init__(self, status: int, body: Any, what: str) -> None:
        super().__init__(f"{what}: {status} {body}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class KubectlResult:
    returncode: int
    stdout: str
    stderr: str


def _rsa_key_pair(directory: Path) -> tuple[Path, Path]:
    """The key pair that signs (private) and verifies (public) service-account tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = directory / "sa.key", directory / "sa.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _running_and_ready(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The status patch a kubelet would send once every container started and passed its
    readiness probe."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
    ]
    containers = [
        {
            "name": c["name"],
            "image": c["image"],
            "imageID": "",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": now}},
        }
        for c in pod["spec"]["containers"]
    ]
    status = {"phase": "Running", "startTime": now, "conditions": conditions}
    return {"status": {**status, "containerStatuses": containers}}


def _is_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status", {})
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    return status.get("phase") == "Running" and conditions.get("Ready") == "True"


class KubernetesApiServer:
    """etcd + kube-apiserver + kube-controller-manager; ``start`` blocks until ``/readyz``.

    ``url``, ``admin_token``, ``ca_file`` and ``kubeconfig`` are valid between ``start`` and
    ``stop``; ``stop`` kills the three processes and removes etcd's data.
    """

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._binaries: dict[str, str] = {}
        self.port = 0
        self.admin_token = ""
        # kubectl is a 50 MB Go program: a few at a time, on a machine with two cores.
        self._kubectl_slots = asyncio.Semaphore(4)

    @property
    def url(self) -> str:
        assert self.port, "Kubernetes API server not started"
        return f"https://127.0.0.1:{self.port}"

    @property
    def directory(self) -> Path:
        assert self._dir is not None, "Kubernetes API server not started"
        return self._dir

    @property
    def ca_file(self) -> str:
        """The API server's self-signed serving certificate, which is its own CA."""
        return str(self.directory / "cert.pem")

    @property
    def kubeconfig(self) -> str:
        """A kubeconfig file for the admin (context ``admin``), for ``kubectl`` or the agent."""
        return str(self.directory / "kubeconfig")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._binaries = binaries()
        for attempt in range(3):
            self._dir = Path(tempfile.mkdtemp(prefix="az-kube-"))
            try:
                self._start()
                return
            except RuntimeError as exc:
                self.stop()
                # Another test run took one of the free ports between free_port() and bind.
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise

    def _start(self) -> None:
        directory = self.directory
        cert, key = self_signed(directory, "kube-apiserver")
        sa_key, sa_pub = _rsa_key_pair(directory)
        self.admin_token = uuid.uuid4().hex
        (directory / "tokens.csv").write_text(f'{self.admin_token},admin,1,"system:masters"\n')
        self.port = free_port()
        self._write_kubeconfig()

        client, peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            "--name=default",
            f"--data-dir={directory / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--log-level=warn",
            "--logger=zap",
        )
        self._wait("etcd", lambda: self._get(f"{etcd_url}/health") == 200)
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            "--insecure-port=0",
            f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            f"--cert-dir={directory / 'certs'}",
            f"--token-auth-file={directory / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--disable-admission-plugins=ServiceAccount",
            "--service-cluster-ip-range=10.0.0.0/24",
            "-v=1",
        )
        self._wait("kube-apiserver", lambda: self._get(f"{self.url}/readyz") == 200)
        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            f"--controllers={CONTROLLERS}",
            "--concurrent-deployment-syncs=2",
            "--concurrent-statefulset-syncs=2",
            "-v=1",
        )

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.url, "certificate-authority": self.ca_file},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.admin_token}}],
            "contexts": [{"name": "admin", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "admin",
        }
        Path(self.kubeconfig).write_text(json.dumps(config))

    def _spawn(self, name: str, *args: str) -> None:
        with (self.directory / f"{name}.log").open("ab") as log:
            self._processes[name] = subprocess.Popen(
                [self._binaries[name], *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def _get(self, url: str) -> int:
        """Status of an authenticated GET (0 when nothing answers), for the start-up waits."""
        context = ssl.create_default_context(cafile=self.ca_file)
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, ValueError):
            return 0

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            process = self._processes[name]
            if process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / f"{name}.log").read_text(errors="replace")
                raise RuntimeError(f"{name} did not become ready:\n{log[-3000:]}")
            time.sleep(0.1)

    def log(self, name: str) -> str:
        """The output of ``etcd``, ``kube-apiserver`` or ``kube-controller-manager`` so far."""
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            stop_process(self._processes.pop(name, None))
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.port = 0

    # -- connections -------------------------------------------------------------------------

    def connection(self, token: str, timeout: float = 10.0) -> KubernetesConnection:
        """How the agent's drivers reach this server with ``token`` (TLS verified)."""
        return KubernetesConnection(
            host=self.url, token=token, ca_file=self.ca_file, verify_ssl=True, timeout=timeout
        )

    def admin_connection(self, timeout: float = 10.0) -> KubernetesConnection:
        """:meth:`connection` as the admin (``system:masters``: every verb on everything)."""
        return self.connection(self.admin_token, timeout)

    # -- raw API -----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call (as the admin unless ``token``); the decoded JSON answer.

        ``KubeApiError`` for a status >= 400, with the server's ``v1.Status`` body.
        """
        headers = {
            "Authorization": f"Bearer {token or self.admin_token}",
            "Accept": "application/json",
            "Content-Type": content_type,
        }
        ssl_context = ssl.create_default_context(cafile=self.ca_file)
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                method,
                f"{self.url}{path}",
                data=None if body is None else json.dumps(body),
                headers=headers,
                params=params,
                ssl=ssl_context,
            ) as response,
        ):
            text = await response.text()
        try:
            decoded: Any = json.loads(text) if text else None
        except ValueError:
            decoded = text
        if response.status >= 400:
            raise KubeApiError(response.status, decoded, f"{method} {path}")
        return decoded

    async def create_namespace(self, name: str | None = None) -> str:
        """A new namespace (``t-<random>`` unless named); its name."""
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        await self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        return name

    async def create_service_account(self, namespace: str, name: str) -> None:
        await self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        )

    async def token_for(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A bearer token of the service account (TokenRequest API, as a projected volume gets),
        authenticating as ``system:serviceaccount:<namespace>:<service_account>``."""
        answer = await self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds},
            },
        )
        return str(answer["status"]["token"])

    # -- workloads ---------------------------------------------------------------------------

    def _workload(
        self, kind: WorkloadKind, name: str, replicas: int, labels: Mapping[str, str] | None
    ) -> dict[str, Any]:
        selector = {WORKLOAD_LABEL: name}
        spec: dict[str, Any] = {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**selector, **(labels or {})}},
                # Never pulled: there is no kubelet.
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/none:0"}]},
            },
        }
        if kind is WorkloadKind.STATEFULSET:
            spec["serviceName"] = name
        return {
            "apiVersion": "apps/v1",
            "kind": str(kind),
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": spec,
        }

    async def create_deployment(
        self,
        namespace: str,
        name: str,
        replicas: int = 1,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A Deployment whose metadata and pods carry ``labels``; the stored object."""
        body = self._workload(WorkloadKind.DEPLOYMENT, name, replicas, labels)
        created: dict[str, Any] = await self.request(
            "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body
        )
        return created

    async def create_statefulset(
        self,
        namespace: str,
        name: str,
        replicas: int = 1,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A StatefulSet (``OrderedReady``: pod N+1 comes once pod N is ready); the stored one."""
        body = self._workload(WorkloadKind.STATEFULSET, name, replicas, labels)
        created: dict[str, Any] = await self.request(
            "POST", f"/apis/apps/v1/namespaces/{namespace}/statefulsets", body
        )
        return created

    async def get_workload(self, kind: WorkloadKind | str, namespace: str, name: str) -> Any:
        plural = _PLURAL[WorkloadKind(kind)]
        return await self.request("GET", f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}")

    async def mark_ready(
        self, kind: WorkloadKind | str, namespace: str, name: str, within: float = 60.0
    ) -> dict[str, Any]:
        """Act as the kubelet until every desired replica of the workload is ready.

        Marks each of its pods Running and Ready (their ``status`` subresource) as they appear,
        and returns the workload once its status says all ``spec.replicas`` are ready, updated,
        available and observed (for 0 replicas: once its pods are gone).
        """
        kind = WorkloadKind(kind)
        deadline = time.monotonic() + within
        while True:
            workload = await self.get_workload(kind, namespace, name)
            if _settled(kind, workload):
                result: dict[str, Any] = workload
                return result
            pods = await self.request(
                "GET",
                f"/api/v1/namespaces/{namespace}/pods",
                params={"labelSelector": f"{WORKLOAD_LABEL}={name}"},
            )
            for pod in pods["items"]:
                if _is_ready(pod) or pod["metadata"].get("deletionTimestamp"):
                    continue
                try:
                    await self.request(
                        "PATCH",
                        f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status",
                        _running_and_ready(pod),
                        content_type="application/merge-patch+json",
                    )
                except KubeApiError as exc:
                    if exc.status != 404:  # deleted meanwhile by a scale-down
                        raise
            if time.monotonic() > deadline:
                phases = [(p["metadata"]["name"], p["status"].get("phase")) for p in pods["items"]]
                raise AssertionError(
                    f"{kind} {namespace}/{name} not ready after {within} s: "
                    f"status {workload.get('status')}, pods {phases}"
                )
            await asyncio.sleep(0.1)

    # -- kubectl -----------------------------------------------------------------------------

    async def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> KubectlResult:
        """``kubectl --kubeconfig=<admin> <args>``; ``check`` raises on a non-zero exit."""
        async with self._kubectl_slots:
            process = await asyncio.create_subprocess_exec(
                self._binaries["kubectl"],
                f"--kubeconfig={self.kubeconfig}",
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await process.communicate(None if stdin is None else stdin.encode())
        result = KubectlResult(process.returncode or 0, out.decode(), err.decode())
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    async def apply(self, manifest: str) -> None:
        """``kubectl apply -f -`` of a multi-document YAML (see :func:`manifest`)."""
        await self.kubectl("apply", "-f", "-", stdin=manifest)

    async def can_i(
        self,
        verb: str,
        resource: str,
        *,
        namespace: str,
        service_account: str,
        sa_namespace: str | None = None,
        subresource: str = "",
        name: str = "",
    ) -> bool:
        """``kubectl auth can-i`` in ``namespace`` as the service account (of ``sa_namespace``,
        default ``namespace``). ``resource`` is a plural such as ``deployments.apps``; kubectl
        reads ``deployments/scale`` as the object named "scale", hence ``subresource``."""
        who = f"system:serviceaccount:{sa_namespace or namespace}:{service_account}"
        target = f"{resource}/{name}" if name else resource
        extra = [f"--subresource={subresource}"] if subresource else []
        result = await self.kubectl(
            "auth", "can-i", verb, target, *extra, "-n", namespace, f"--as={who}", check=False
        )
        answer = result.stdout.strip()
        if answer not in ("yes", "no"):
            raise AssertionError(f"kubectl auth can-i {verb} {target}: {result.stderr or answer}")
        return answer == "yes"


def _settled(kind: WorkloadKind, workload: Mapping[str, Any]) -> bool:
    spec, status = workload.get("spec", {}), workload.get("status", {})
    want = int(spec.get("replicas", 1))
    counts = ["replicas", "readyReplicas", "updatedReplicas"]
    counts.append("availableReplicas" if kind is WorkloadKind.DEPLOYMENT else "currentReplicas")
    observed = status.get("observedGeneration", 0) >= workload["metadata"].get("generation", 0)
    return observed and all(int(status.get(c) or 0) == want for c in counts)
