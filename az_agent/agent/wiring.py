"""``az-agent run``: build the agent from its configuration, serve the API, stop cleanly.

Start-up refuses a misconfigured agent with one readable line (exit 2): bad configuration, a
bucket that is missing or refuses the credentials, PostgreSQL tools missing or older than the
server. A dependency that is merely down (bucket, PostgreSQL, Pinot, Alertmanager, Kubernetes)
never stops it: it starts, says so in ``/readyz``, ``/status`` and the metrics, and retries.

SIGTERM and SIGINT cancel the agent's task group: the operation in flight is left checkpointed,
the lease is released only when no operation is running, every task is awaited. A second
signal while stopping is logged and ignored: it never cuts the lease release short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from aiohttp import web

from az_agent.agent.backup.postgres import PostgresBackupLoop
from az_agent.agent.backup.retention import RetentionLoop
from az_agent.agent.backup.segments import SegmentBackupLoop
from az_agent.agent.config import AgentConfig, ConfigError
from az_agent.agent.daemon import Agent, AgentDeps
from az_agent.agent.http.app import build_app
from az_agent.agent.http.auth import TOKEN_ENV, Authenticator
from az_agent.agent.http.server import ApiRunner
from az_agent.agent.observability.logs import bind_context
from az_agent.agent.observability.metrics import AgentMetrics
from az_agent.agent.secrets import read_secret, read_storage_secrets
from az_agent.agent.signals import stop_on_signals
from az_agent.agent.standby.cold import ColdStandby, resolve_namespace
from az_agent.drivers.alerts import Matcher, SilenceManager, open_silence_manager
from az_agent.drivers.errors import Misconfigured, PermissionDenied, Unavailable
from az_agent.drivers.kubernetes.client import KubernetesConnection
from az_agent.drivers.kubernetes.service_proxy import KubernetesServiceProxy
from az_agent.drivers.kubernetes.workloads import KubernetesWorkloads
from az_agent.drivers.pinot.auth import read_pinot_credentials
from az_agent.drivers.pinot.http import HttpPinotController
from az_agent.drivers.postgres.config import resolve_password
from az_agent.drivers.postgres.dumper import PgDumper
from az_agent.drivers.storage.base import ObjectStore
from az_agent.drivers.storage.factory import open_object_store
from az_agent.state import Clock, SystemClock

log = logging.getLogger(__name__)


class StartupRefused(Exception):
    """The agent cannot start as configured; the message is one line for the operator."""


def read_api_token(config: AgentConfig) -> str | None:
    token_file = config.service.http.token_file
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise StartupRefused(f"http.tokenFile {token_file}: {exc.strerror}") from None
        if not token:
            raise StartupRefused(f"http.tokenFile {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def tls_context(config: AgentConfig) -> ssl.SSLContext | None:
    http = config.service.http
    if not http.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(http.tls_cert_file, http.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise StartupRefused(f"http TLS certificate/key cannot be loaded: {exc}") from None
    return context


@asynccontextmanager
async def build_agent(config: AgentConfig, clock: Clock | None = None) -> AsyncIterator[Agent]:
    """Connect every dependency, check them, and yield the agent; close them all on exit."""
    clock = clock or SystemClock()
    service = config.service
    async with AsyncExitStack() as stack:
        secrets = await asyncio.to_thread(read_storage_secrets, config)
        store = await open_object_store(config.storage, secrets)
        stack.push_async_callback(store.close)
        try:
            await store.check()
        except (Misconfigured, PermissionDenied) as exc:
            raise StartupRefused(f"object storage ({config.storage.type}): {exc}") from exc
        except Unavailable as exc:  # recovery retries it; /readyz names it meanwhile
            log.warning("object storage unreachable at start-up, retrying: %s", exc)
        credentials = await read_pinot_credentials(service.secrets_dir, service.pinot.auth_secret)
        pinot = HttpPinotController.from_settings(service.pinot, credentials)
        stack.push_async_callback(pinot.close)
        metrics = AgentMetrics(config.zone, group=service.group)
        dumper = None
        database_backup = None
        if service.postgres.databases:
            password = resolve_password(service.postgres, service.secrets_dir)
            dumper = PgDumper(service.postgres, password)
            stack.push_async_callback(dumper.close)
            try:
                await dumper.check()
            except Misconfigured as exc:
                raise StartupRefused(f"postgres: {exc}") from exc
            except Unavailable as exc:  # the tools were found; dumps retry until it answers
                log.warning("postgres unreachable at start-up, dumps retry: %s", exc)
            database_backup = PostgresBackupLoop(
                dumper, service.postgres, service.backup_interval_minutes * 60, metrics, clock
            )
        silences = _silences(config)
        stack.push_async_callback(silences.close)
        proxy = None
        if service.kubernetes.enabled:
            kube = service.kubernetes
            connection = KubernetesConnection(
                host=kube.host,
                kubeconfig=kube.kubeconfig or None,
                context=kube.context or None,
                timeout=kube.timeout_seconds,
            )
            try:
                proxy = await KubernetesServiceProxy.connect(connection)
            except Misconfigured as exc:  # no kubeconfig, no in-cluster account: no retry helps
                raise StartupRefused(f"kubernetes: {exc}") from exc
            stack.push_async_callback(proxy.close)
        cold = await _cold_standby(config, store, clock, stack)
        deps = AgentDeps(
            config=config,
            store=store,
            clock=clock,
            pinot=pinot,
            dumper=dumper,
            silences=silences,
            segment_backup=SegmentBackupLoop(pinot, service.pinot, metrics, clock),
            database_backup=database_backup,
            metrics=metrics,
            service_proxy=proxy,
            retention=RetentionLoop(service.retention, clock),
            cold_standby=cold,
        )
        yield Agent(deps)


async def _cold_standby(
    config: AgentConfig, store: ObjectStore, clock: Clock, stack: AsyncExitStack
) -> ColdStandby | None:
    """The zone's cold-standby workloads (``coldStandby``), reached as ``kubernetes`` says; the
    start is refused when no namespace or no cluster configuration can be found."""
    service = config.service
    if not service.cold_standby.enabled:
        return None
    try:
        namespace = await asyncio.to_thread(
            resolve_namespace, service.cold_standby, fallback=config.global_.namespace
        )
    except ConfigError as exc:
        raise StartupRefused(str(exc)) from None
    kube = service.kubernetes
    connection = KubernetesConnection(
        host=kube.host, kubeconfig=kube.kubeconfig or None, context=kube.context or None
    )
    try:
        scaler = await KubernetesWorkloads.connect(connection)
    except Misconfigured as exc:  # no kubeconfig, no in-cluster account: no retry helps
        raise StartupRefused(f"kubernetes (coldStandby): {exc}") from exc
    stack.push_async_callback(scaler.close)
    return ColdStandby(
        scaler, service.cold_standby, namespace, store=store, zone=config.zone, clock=clock
    )


def _silences(config: AgentConfig) -> SilenceManager:
    am = config.service.alertmanager
    token = None
    if am.token_secret:
        token = read_secret(config.service.secrets_dir, am.token_secret, "token").get_secret_value()
    matchers = [Matcher(m.name, m.value, m.is_regex, m.is_equal) for m in am.matchers]
    return open_silence_manager(
        am.url,
        matchers=matchers,
        created_by=f"{am.created_by}/{config.zone}",
        timeout=am.timeout_seconds,
        bearer_token=token,
    )


async def serve(agent: Agent, config: AgentConfig, *, ready: asyncio.Event | None = None) -> None:
    """Run the agent and its HTTP server until cancelled."""
    # Before the site starts: its connections' tasks inherit this context, so every record,
    # the HTTP handlers' too, names the zone and the holder.
    bind_context(zone=agent.zone, holder=agent.holder)
    http = config.service.http
    authenticator = Authenticator(read_api_token(config), trust_loopback=http.trust_loopback)
    runner = ApiRunner(build_app(agent, authenticator), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, http.host, http.port, ssl_context=tls_context(config))
        try:
            await site.start()  # before the agent runs: a busy port refuses the start cleanly
        except OSError as exc:
            raise StartupRefused(
                f"http: cannot listen on {http.host}:{http.port}: {exc.strerror}"
            ) from None

        async def on_ready() -> None:
            scheme = "https" if http.tls_cert_file else "http"
            log.info(
                "zone %s listening on %s://%s:%d (%s)",
                agent.zone,
                scheme,
                http.host,
                http.port,
                authenticator.describe(),
            )
            if ready is not None:
                ready.set()

        await agent.run(on_ready=on_ready)
    finally:
        await runner.cleanup()


async def run_agent(config: AgentConfig) -> None:
    """``az-agent run``: serve until SIGTERM/SIGINT.

    The first signal cancels the agent; later ones are logged and change nothing, so an
    impatient second SIGTERM cannot cut the shutdown's lease release short (the daemon waits
    for it to the end in any case). SIGKILL remains the way to stop without it.
    """
    bind_context(zone=config.zone)  # the records of the start-up too (the holder comes later)
    with stop_on_signals(again="already stopping, the lease is released first"):
        async with build_agent(config) as agent:
            with contextlib.suppress(asyncio.CancelledError):
                await serve(agent, config)
    log.info("stopped cleanly")


__all__ = ["ConfigError", "StartupRefused", "build_agent", "run_agent", "serve"]
