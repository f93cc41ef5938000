"""The ``s3`` backend: ``moto_server`` in a subprocess on 127.0.0.1, its conditional writes
made atomic (:mod:`tests.servers.moto_atomic`).

A subprocess rather than moto's in-process ``ThreadedMotoServer``: the contract's memory test
traces this interpreter's allocations, and the server's stored objects must not count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.servers.process import free_port, stop_process
from tests.servers.s3server import S3ServerBackend, answers

START_TIMEOUT = 30.0
ATOMIC_MOTO = "tests.servers.moto_atomic"


class MotoBackend(S3ServerBackend):
    name = "s3"

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self._port = 0
        super().__init__()

    def start(self) -> None:
        self._port = free_port()
        handle, name = tempfile.mkstemp(prefix="moto-", suffix=".log")
        self._log = Path(name)
        with os.fdopen(handle, "wb") as log:  # the server writes its access log here
            self._process = subprocess.Popen(
                [sys.executable, "-m", ATOMIC_MOTO, "-H", "127.0.0.1", "-p", str(self._port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).parents[2],  # where ``tests`` is importable
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(self._port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = self._log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"moto_server did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self._process)
        self._process = None
        if self._log is not None:
            self._log.unlink(missing_ok=True)

    @property
    def pid(self) -> int:
        assert self._process is not None, "backend not started"
        return self._process.pid

    @property
    def endpoint(self) -> str:
        assert self._process is not None, "backend not started"
        return f"http://127.0.0.1:{self._port}"
