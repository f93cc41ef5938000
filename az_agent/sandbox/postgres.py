"""A throwaway PostgreSQL server on 127.0.0.1 for the sandbox, tests and benchmarks.

``initdb`` refuses to run as root, so as root every server command runs through
``runuser -u postgres``; the data directory then comes from ``mkdtemp`` directly under /tmp
(pytest's ``tmp_path`` lives in a 0700 directory the ``postgres`` user cannot enter).
Durability is switched off (``fsync=off`` and friends): the data is thrown away anyway.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from pydantic.alias_generators import to_camel

from az_agent.drivers.postgres.config import PostgresSettings

PG_BIN = Path(os.environ.get("AZ_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"
PASSWORD = "test-Secret-4711"  # a throwaway server's password


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One server: ``start()`` (about a second), ``stop()``; host, port, user and password.

    Host connections need the password (scram-sha-256), so tests can prove that a wrong one
    is refused; the Unix socket in the data directory trusts the server's own user.
    """

    def __init__(self, name: str = "pg") -> None:
        self.name = name
        self.host = "127.0.0.1"
        self.port = 0
        self.user = SUPERUSER
        self.password = PASSWORD
        self._dir: Path | None = None

    @property
    def bin_dir(self) -> Path:
        return PG_BIN

    @property
    def directory(self) -> Path:
        assert self._dir is not None, "server not started"
        return self._dir

    def _run(self, *args: str) -> None:
        as_root = os.geteuid() == 0
        command = ["runuser", "-u", "postgres", "--", *args] if as_root else list(args)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip()} {tail}")

    def start(self) -> None:
        """initdb, then start on a free port (retrying if another process took the port)."""
        self._dir = Path(tempfile.mkdtemp(prefix=f"az-{self.name}-", dir="/tmp"))
        self._dir.chmod(0o755)
        pwfile = self._dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self._dir, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self._dir / "data"),
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
        )
        for attempt in range(5):
            self.port = free_port()
            try:
                self._pg_ctl_start()
                return
            except RuntimeError:
                if attempt == 4:
                    raise

    def _pg_ctl_start(self) -> None:
        options = (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=50 -c shared_buffers=64MB"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.directory / "data"),
            "-l",
            str(self.directory / "server.log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        if self._dir is None:
            return
        try:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self._dir / "data"), "-m", "fast", "stop")
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def settings(self, **overrides: object) -> PostgresSettings:
        """Agent settings that reach this server (the password is passed separately)."""
        values: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "databases": ["configdb", "orchestratordb"],
            "binDir": str(PG_BIN),
            "sslmode": "disable",
            "connectTimeoutSeconds": 5,
        }
        values.update({to_camel(key): value for key, value in overrides.items()})
        return PostgresSettings.model_validate(values)
