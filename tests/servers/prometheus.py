"""A real Prometheus (the Debian ``prometheus`` package) on 127.0.0.1, scraping given targets.

Every second (scrapes, and the evaluation of ``rule_files`` when given), so a test sees a change
within a couple of seconds; storage lives in a temporary directory removed on stop. ``start``
returns once ``/-/ready`` answers; :meth:`wait_scraped` waits for every target's first scrape
(which can take a few seconds after ready).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.servers.process import free_port

START_TIMEOUT = 30.0


def _binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise RuntimeError(
            "Prometheus not found; install it with "
            "`apt-get install -y --no-install-recommends prometheus` (scripts/test.sh does)"
        )
    return found


class PrometheusServer:
    """One Prometheus process; ``targets`` maps a value of the ``az`` label to host:port."""

    def __init__(self, targets: dict[str, str], rule_files: list[Path] | None = None) -> None:
        self._targets = targets
        self._rule_files = rule_files or []
        self._process: asyncio.subprocess.Process | None = None
        self._dir: Path | None = None
        self.port = 0

    @property
    def url(self) -> str:
        assert self.port, "Prometheus not started"
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> PrometheusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="az-prometheus-"))
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(path) for path in self._rule_files],
            "scrape_configs": [
                {
                    "job_name": "az-agent",
                    "static_configs": [
                        {"targets": [address], "labels": {"az": name}}
                        for name, address in self._targets.items()
                    ],
                }
            ],
        }
        (self._dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        log = (self._dir / "prometheus.log").open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                _binary(),
                f"--config.file={self._dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self._dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not await self._ready():
            if self._process.returncode is not None or time.monotonic() > deadline:
                text = (self._dir / "prometheus.log").read_text(errors="replace")
                await self.stop()
                raise RuntimeError(f"Prometheus did not become ready:\n{text[-2000:]}")
            await asyncio.sleep(0.05)

    async def _ready(self) -> bool:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as client,
                client.get(f"{self.url}/-/ready") as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``: its ``data`` (the call must succeed)."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client,
            client.get(f"{self.url}/api/v1/{path}", params=params) as response,
        ):
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, str]]:
        """An instant query: each series' labels, and its value under ``"value"``."""
        data = await self.api("query", query=expr)
        return [{**s["metric"], "value": s["value"][1]} for s in data["result"]]

    async def alerts(self) -> list[dict[str, Any]]:
        """The alerts of the loaded rules, pending or firing: labels, ``state`` and value."""
        data = await self.api("alerts")
        return list(data["alerts"])

    async def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its ``health`` (``ok``, ``err`` with ``lastError``)."""
        data = await self.api("rules")
        return [rule for group in data["groups"] for rule in group["rules"]]

    async def scrapes(self) -> dict[str, str]:
        """Per target (its ``az`` label), the time of its last scrape while it is up."""
        data = await self.api("targets")
        return {
            t["labels"]["az"]: t["lastScrape"] for t in data["activeTargets"] if t["health"] == "up"
        }

    async def wait_scraped(self, within: float = 30.0) -> None:
        """Wait until every target was scraped, and once more after the call began (so what
        the agents export now is what the next query sees)."""
        first = await self.scrapes()
        deadline = time.monotonic() + within
        while True:
            now = await self.scrapes()
            if set(now) == set(self._targets) and all(now[t] != first.get(t) for t in now):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus did not scrape every target: {now}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._dir, ignore_errors=True)
            self._dir = None
