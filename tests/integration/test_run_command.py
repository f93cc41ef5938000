"""``az-agent run`` as an operator starts and stops it: a real process, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from az_agent.drivers.storage.factory import open_object_store
from az_agent.sandbox.postgres import free_port
from az_agent.state import LeaseRecord, LeaseState
from az_agent.state.keys import lease_key
from tests.conftest import BackendPool
from tests.servers.flaky_proxy import FlakyProxy
from tests.servers.tls import self_signed


def _config(tmp_path: Path, **service: object) -> Path:
    port = free_port()
    document = {
        "global": {"cloudStorage": {"type": "file", "file": {"path": str(tmp_path / "bucket")}}},
        "az-service": {
            "config": {
                "zone": "az1",
                "secretsDir": str(tmp_path / "secrets"),
                "http": {"host": "127.0.0.1", "port": port},
                "pinot": {"controllerUrl": f"http://127.0.0.1:{free_port()}"},
                "postgres": {"databases": []},
                **service,
            }
        },
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def _spawn(config: Path) -> asyncio.subprocess.Process:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AZ_AGENT")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "az_agent.cli",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )


async def _get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        return response.status, await response.json()


async def test_run_serves_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = _config(tmp_path)
    port = yaml.safe_load(config.read_text())["az-service"]["config"]["http"]["port"]
    process = await _spawn(config)
    try:
        for _ in range(100):
            try:
                status, body = await _get(f"http://127.0.0.1:{port}/status")
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
                continue
            if body["leader"]:
                break
            await asyncio.sleep(0.1)
        assert body["leader"] is True
        assert body["state"] == "ACTIVE"
        status, _ = await _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        status, ready = await _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503  # Pinot is not there
        assert "pinot" in json.dumps(ready)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert any("loopback clients only" in m for m in messages), "says how POSTs are protected"
    assert any("lease released on shutdown" in m for m in messages)
    lease = (tmp_path / "bucket" / "az1" / "lease.json").read_bytes()
    assert b'"state":"released"' in lease.replace(b" ", b"")


async def test_misconfigured_agent_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    config = _config(
        tmp_path, postgres={"databases": ["configdb"], "binDir": str(tmp_path / "no-such-dir")}
    )
    process = await _spawn(config)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    [line] = stderr.decode().strip().splitlines()[-1:]
    assert line.startswith("az-agent: refusing to start: postgres:")
    assert "pg_dump" in line


async def test_bucket_that_cannot_work_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "bucket").write_text("a file where the bucket directory should be")
    process = await _spawn(_config(tmp_path))
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    last = stderr.decode().strip().splitlines()[-1]
    assert last.startswith("az-agent: refusing to start: object storage (file):")


async def _wait_serving(url: str, ssl_context: ssl.SSLContext | None = None) -> None:
    connector = aiohttp.TCPConnector(ssl=ssl_context) if ssl_context else None
    async with aiohttp.ClientSession(connector=connector) as client:
        for _ in range(100):
            try:
                async with client.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")


async def test_tls_and_bearer_token(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("t0ken-from-a-mounted-secret\n")
    config = _config(
        tmp_path,
        http={
            "host": "127.0.0.1",
            "port": free_port(),
            "tokenFile": str(token_file),
            "tlsCertFile": str(cert),
            "tlsKeyFile": str(key),
        },
    )
    port = yaml.safe_load(config.read_text())["az-service"]["config"]["http"]["port"]
    trust = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{port}"
    process = await _spawn(config)
    try:
        await _wait_serving(url, trust)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as client:
            async with client.post(f"{url}/resume") as response:
                assert response.status == 401
            headers = {"Authorization": "Bearer t0ken-from-a-mounted-secret"}
            async with client.post(f"{url}/resume", headers=headers) as response:
                assert response.status == 200  # authorised; the active agent lifts nothing
                assert (await response.json())["silencesLifted"] == []
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert "POST endpoints require a bearer token" in stderr.decode()
    assert "t0ken" not in stderr.decode()


async def test_busy_port_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    try:
        config = _config(tmp_path, http={"host": "127.0.0.1", "port": busy})
        process = await _spawn(config)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        holder.close()
    assert process.returncode == 2
    last = stderr.decode().strip().splitlines()[-1]
    assert last.startswith(f"az-agent: refusing to start: http: cannot listen on 127.0.0.1:{busy}")


@dataclass
class HoldingProxy(FlakyProxy):
    """Forwards to S3, but holds the agent's release of its lease (a PUT of ``lease.json``
    saying ``released``) for ``hold_seconds``, then drops it if the agent hung up meanwhile:
    a request cut short by a process that gave up never lands."""

    failure_rate: float = 0.0
    hold_seconds: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.releasing = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        lease = request.method == "PUT" and request.path.endswith("/lease.json")
        if lease and b'"released"' in body:
            self.releasing.set()
            await asyncio.sleep(self.hold_seconds)
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)
        return await super()._handle(request)


async def test_a_second_sigterm_does_not_cut_the_lease_release(
    tmp_path: Path, backend_pool: BackendPool
) -> None:
    backend = backend_pool.get("s3")
    settings, secrets = await backend.new_bucket()
    assert secrets is not None
    assert secrets.access_key is not None
    assert secrets.secret_key is not None
    proxy = HoldingProxy(backend.endpoint, "s3")
    await proxy.start()
    try:
        storage = backend.through(settings, proxy.url).model_dump(mode="json", by_alias=True)
        secret_dir = tmp_path / "secrets" / "cloud-storage-secret"
        secret_dir.mkdir(parents=True)
        (secret_dir / "accessKey").write_text(secrets.access_key.get_secret_value())
        (secret_dir / "secretKey").write_text(secrets.secret_key.get_secret_value())
        config = _config(tmp_path)
        document = yaml.safe_load(config.read_text())
        document["global"]["cloudStorage"] = storage
        config.write_text(yaml.safe_dump(document))
        port = document["az-service"]["config"]["http"]["port"]
        process = await _spawn(config)
        try:
            await _wait_leading(f"http://127.0.0.1:{port}")
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proxy.releasing.wait(), 20)
            process.send_signal(signal.SIGTERM)  # impatient: while the release is in flight
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        await proxy.stop()
    assert process.returncode == 0, stderr.decode()
    store = await open_object_store(settings, secrets)
    try:
        data, _ = await store.get(lease_key("az1"))
    finally:
        await store.close()
    record = LeaseRecord.decode(data, "lease")
    assert record.state is LeaseState.RELEASED, f"{record.state}: {stderr.decode()[-3000:]}"
    assert "SIGTERM again: already stopping" in stderr.decode()
    assert "lease released on shutdown" in stderr.decode()


async def _wait_leading(url: str) -> None:
    for _ in range(200):
        try:
            _, body = await _get(f"{url}/status")
        except aiohttp.ClientConnectionError:
            body = {}
        if body.get("leader"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never led its zone")
