"""A real Alertmanager (the Debian ``prometheus-alertmanager`` package) on 127.0.0.1.

Gossip is off (empty ``--cluster.listen-address``), storage and config live in a temporary
directory removed on stop, and ``start`` returns once ``/-/ready`` answers. With ``basic_auth``
the server requires it through ``--web.config.file``, as a hardened deployment would.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers.process import free_port, stop_process

START_TIMEOUT = 20.0
BINARIES = ("prometheus-alertmanager", "alertmanager")

CONFIG = 'route: {receiver: "null"}\nreceivers: [{name: "null"}]\n'

# bcrypt of the password "test" (cost 12), as published in the Prometheus documentation;
# the image has no bcrypt module or htpasswd to make a fresh one.
BASIC_AUTH_USER = "admin"
BASIC_AUTH_PASSWORD = "test"
_BASIC_AUTH_HASH = "$2b$12$hNf2lSsxfm0.i4a.1kVpSOVyBCfIB51VRjgBUyv6kdnyTlgWj81Ay"


def _binary() -> str:
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "Alertmanager not found; install it with "
        "`apt-get install -y --no-install-recommends prometheus-alertmanager`"
    )


class AlertmanagerServer:
    """One Alertmanager process; ``url`` is valid between ``start`` and ``stop``."""

    def __init__(self, *, basic_auth: bool = False) -> None:
        self._basic_auth = basic_auth
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._port = 0

    @property
    def url(self) -> str:
        assert self._port, "Alertmanager not started"
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="az-alertmanager-"))
        (self._dir / "am.yml").write_text(CONFIG)
        if self._basic_auth:
            users = f"basic_auth_users:\n  {BASIC_AUTH_USER}: {_BASIC_AUTH_HASH}\n"
            (self._dir / "web.yml").write_text(users)
        for _ in range(3):  # the free port may be taken between probe and bind
            if self._launch():
                return
        log = (self._dir / "alertmanager.log").read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"Alertmanager did not become ready:\n{log[-2000:]}")

    def halt(self) -> None:
        """Stop the process, keeping its port and data: an Alertmanager that is down."""
        self._terminate()

    def restart(self) -> None:
        """Start again on the same port (and data) after :meth:`halt`."""
        assert self._dir is not None, "Alertmanager never started"
        if not self._launch(self._port):
            raise RuntimeError(f"Alertmanager did not come back on port {self._port}")

    def _launch(self, port: int | None = None) -> bool:
        assert self._dir is not None
        self._port = port or free_port()
        command = [
            _binary(),
            f"--config.file={self._dir / 'am.yml'}",
            f"--storage.path={self._dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self._port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
        if self._basic_auth:
            command.append(f"--web.config.file={self._dir / 'web.yml'}")
        with (self._dir / "alertmanager.log").open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self._process.poll() is None:
            if self._ready():
                return True
            time.sleep(0.05)
        self._terminate()
        return False

    def _ready(self) -> bool:
        headers = {}
        if self._basic_auth:
            token = base64.b64encode(f"{BASIC_AUTH_USER}:{BASIC_AUTH_PASSWORD}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=1)
        try:
            connection.request("GET", "/-/ready", headers=headers)
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _terminate(self) -> None:
        stop_process(self._process)
        self._process = None

    def stop(self) -> None:
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
