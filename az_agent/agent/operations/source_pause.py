"""``/activate?namespace=<ns>``: pause the source zone's agent before taking over from it.

The pause goes through the Kubernetes API server's service proxy (the zones' pods need no
network path to each other) to ``kubernetes.sourceService``:``kubernetes.sourcePort`` in
``<ns>``, carrying the *source* agent's API token (``kubernetes.sourceTokenSecret``), since
the source checks its own token, not ours.

It runs while ``/activate`` is being answered and before anything is written (no operation
journaled, no lease or primary record touched), so a refusal can be answered: anything but a
finished pause (200) - the source's own refusal, a pause still running, an API server or
network failure - stops the activation with 409 carrying the source's answer, unless
``forcePause=true``. ``forcePause`` never implies ``force``: a source whose lease is still live
is refused afterwards as without ``namespace``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from az_agent.agent.config import ConfigError
from az_agent.agent.errors import InvalidParameter, WrongState
from az_agent.agent.operations.context import AgentContext
from az_agent.agent.operations.requests import ActivateRequest
from az_agent.agent.secrets import read_secret
from az_agent.drivers.errors import DriverError

log = logging.getLogger(__name__)

NOT_ASKED = "skipped: no namespace given"
ANSWER_MARGIN_SECONDS = 30.0
"""How much longer than the source's own wait the proxied call may take to answer."""


async def pause_source(agent: AgentContext, request: ActivateRequest) -> str:
    """Pause the source agent named by ``request.namespace``; the detail of the
    ``pause-source`` phase. Raises ``WrongState`` (409) when the source did not pause and
    ``forcePause`` is not set, ``InvalidParameter`` (400) when ``namespace`` cannot be used."""
    namespace = request.namespace
    if namespace is None:
        return NOT_ASKED
    proxy = agent.deps.service_proxy
    if proxy is None:
        raise InvalidParameter(
            "namespace", "this agent has no Kubernetes access (kubernetes.enabled is false)"
        )
    settings = agent.deps.config.service.kubernetes
    try:
        token = await _source_token(agent)
        reply = await proxy.pause_agent(
            namespace,
            force=request.force_pause,
            service=settings.source_service,
            port=settings.source_port,
            agent_token=token,
            wait_seconds=int(settings.timeout_seconds),
            request_timeout=settings.timeout_seconds + ANSWER_MARGIN_SECONDS,
        )
    except ValueError as exc:  # not a Kubernetes name: refused before anything was sent
        raise InvalidParameter("namespace", str(exc)) from exc
    except (DriverError, ConfigError) as exc:
        return _not_paused(agent, request, f"could not be paused: {exc}", error=str(exc))
    where = f"{namespace}/{settings.source_service}:{settings.source_port}"
    if reply.status == 200:
        log.info("the source agent in %s paused", where)
        return f"source agent in {where} paused"
    verdict = "is still pausing" if reply.status == 202 else "refused to pause"
    return _not_paused(
        agent,
        request,
        f"{verdict} (HTTP {reply.status})",
        status=reply.status,
        body=reply.body,
    )


async def _source_token(agent: AgentContext) -> str | None:
    """The source agent's API token, read at each use so that a rotated secret is picked up."""
    service = agent.deps.config.service
    secret = service.kubernetes.source_token_secret
    if not secret:
        return None
    value = await asyncio.to_thread(read_secret, service.secrets_dir, secret, "token")
    return value.get_secret_value()


def _not_paused(agent: AgentContext, request: ActivateRequest, what: str, **answer: Any) -> str:
    """Go on (``forcePause``) with a detail saying so, or refuse with the source's answer."""
    sentence = f"the source agent in namespace {request.namespace} {what}"
    if request.force_pause:
        log.warning("%s; going on (forcePause=true)", sentence)
        return f"{sentence}; going on (forcePause)"
    raise WrongState(
        f"{sentence}. Nothing was changed. Check the source zone, or pass forcePause=true to "
        "activate without its pause.",
        state=agent.state.value,
        source={"namespace": request.namespace, **answer},
    )
