"""A fresh fake API server per test, and drivers connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from az_agent.drivers.kubernetes.client import KubernetesConnection
from az_agent.drivers.kubernetes.service_proxy import KubernetesServiceProxy
from az_agent.drivers.kubernetes.workloads import KubernetesWorkloads
from tests.integration.kubernetes.fake_apiserver import FakeApiServer


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def connection(apiserver: FakeApiServer) -> KubernetesConnection:
    return KubernetesConnection(host=apiserver.url, token=apiserver.token, timeout=5.0)


@pytest.fixture
async def workloads(connection: KubernetesConnection) -> AsyncIterator[KubernetesWorkloads]:
    async with await KubernetesWorkloads.connect(connection) as scaler:
        yield scaler


@pytest.fixture
async def service_proxy(
    connection: KubernetesConnection,
) -> AsyncIterator[KubernetesServiceProxy]:
    async with await KubernetesServiceProxy.connect(connection) as proxy:
        yield proxy
