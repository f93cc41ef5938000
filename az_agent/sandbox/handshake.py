"""The failover handshake from a terminal: ``az-agent pause|activate|status|resume --url URL``.

Each command makes one call to a running agent and prints what an operator needs (state,
operation, phases with status and duration, primary) or, with ``--json``, the server's body as
is, for scripts. ``activate --wait`` follows ``/status`` with a live progress bar (rich) until
the activation ends and exits 1 when it failed, so a script can chain the handshake. The drill
shares :func:`follow_operation` and the renderers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from az_agent.agent.http.client import AgentClient, AgentRefused, AgentUnreachable, Body

EXIT_OK, EXIT_FAILED = 0, 1
POLL_SECONDS = 0.5
TRANSIENT = ("ACTIVATING", "PAUSING")
UNREACHABLE_GRACE_SECONDS = 60.0
"""How long ``--wait`` keeps polling an agent that stopped answering (a restarted agent resumes
its activation from the bucket)."""


@dataclass
class HandshakeCall:
    """One terminal command, as parsed from the command line."""

    command: str  # pause | activate | status | resume
    url: str
    token: str | None = None
    json: bool = False
    wait: bool = False
    pause_force: bool = False
    pause_wait: int | None = None
    zone: str = ""
    activate_options: dict[str, str | int | bool | None] = field(default_factory=dict)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes} min {rest:02d} s"


def size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def phases_table(operation: Body) -> Table:
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for column in ("phase", "status", "duration", "detail"):
        table.add_column(column, justify="right" if column == "duration" else "left")
    for phase in operation.get("phases") or []:
        table.add_row(
            str(phase.get("name")),
            str(phase.get("status")),
            seconds(phase.get("seconds")),
            str(phase.get("detail") or ""),
        )
    return table


def operation_line(operation: Body) -> str:
    kind, status = operation.get("kind"), operation.get("status")
    line = f"{kind} {operation.get('id')}: {status}"
    if operation.get("sourceZone"):
        line += f" (from {operation['sourceZone']})"
    line += f", {seconds(operation.get('durationSeconds'))}"
    if status == "running" and operation.get("phase"):
        line += f", phase {operation['phase']}"
    if operation.get("error"):
        line += f"; error: {operation['error']}"
    return line


def print_operation(console: Console, operation: Body | None) -> None:
    if not operation:
        console.print("operation: none has run")
        return
    console.print("operation: " + operation_line(operation), highlight=False)
    progress = operation.get("progress") or {}
    if progress.get("segmentsTotal"):
        console.print(
            f"  segments {progress.get('segmentsDone', 0)}/{progress['segmentsTotal']}, "
            f"{size(progress.get('bytesDone', 0))} of {size(progress.get('bytesTotal', 0))}",
            highlight=False,
        )
    for warning in operation.get("warnings") or []:
        console.print(f"  warning: {warning}", highlight=False)
    if operation.get("phases"):
        console.print(phases_table(operation))


def print_status(console: Console, status: Body) -> None:
    primary = status.get("primary") or {}
    role = "leader" if status.get("leader") else "not leader"
    if status.get("leading"):
        role += ", backing up"
    console.print(
        f"zone {status.get('zone')}: {status.get('state')} ({role}), epoch {status.get('epoch')}",
        highlight=False,
    )
    if primary:
        mine = " (this zone)" if primary.get("isThisZone") else ""
        console.print(
            f"primary of group {primary.get('group')}: {primary.get('zone') or 'none'}{mine}, "
            f"term {primary.get('term')}",
            highlight=False,
        )
    rpo = status.get("rpoSeconds") or {}
    if any(v is not None for v in rpo.values()):
        console.print(
            "recovery point: "
            + ", ".join(f"{kind} {seconds(value)}" for kind, value in rpo.items()),
            highlight=False,
        )
    if status.get("failure"):
        console.print(f"failure: {status['failure']}", highlight=False)
    down = {k: v for k, v in (status.get("dependencies") or {}).items() if v != "ok"}
    for name, error in down.items():
        console.print(f"dependency {name} down: {error}", highlight=False)
    allowed = ", ".join(status.get("allowedRequests") or []) or "none"
    console.print(f"accepts: {allowed}", highlight=False)
    print_operation(console, status.get("operation"))


def print_answer(console: Console, call: HandshakeCall, status: int, body: Body) -> None:
    """The human view of a POST's answer."""
    if call.command == "activate" and body.get("dryRun"):
        segments = body.get("segments") or {}
        moving = size(segments.get("bytesToMove", 0))
        console.print(
            f"dry run: {segments.get('toMove', 0)} segments ({moving}) to move, "
            f"{body.get('segmentsAlreadyPresent', 0)} already present, tables to "
            f"create: {', '.join(body.get('tablesToCreate') or []) or 'none'}, estimated "
            f"{seconds(body.get('estimatedSeconds'))}",
            highlight=False,
        )
        refusal = body.get("wouldBeRefused")
        if refusal:
            console.print(
                f"the real call would be refused: {refusal.get('status')} "
                f"{refusal.get('error')}: {refusal.get('reason')}",
                highlight=False,
            )
        return
    if "state" in body:
        line = f"state: {body['state']}"
        if body.get("alreadyHeld"):
            line += " (already held: nothing done)"
        console.print(line, highlight=False)
    if call.command == "resume":
        lifted = body.get("silencesLifted") or []
        resumed = body.get("tablesResumed") or []
        console.print(
            f"silences lifted: {len(lifted)}; tables resumed: {', '.join(resumed) or 'none'}",
            highlight=False,
        )
        return
    if status == 202 and not call.wait:
        console.print(
            f"still running; follow it with: az-agent status --url {call.url}", highlight=False
        )
    print_operation(console, body.get("operation"))


class ProgressView:
    """A live bar for one operation: phase, bytes, the server's rate and ETA, elapsed time."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description:<20}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TextColumn("{task.fields[rate]:>12}"),
            TextColumn("ETA {task.fields[eta]:>8}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressView:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, operation: Body) -> None:
        progress = operation.get("progress") or {}
        total = progress.get("bytesTotal") or None
        eta = operation.get("etaSeconds")
        rate = f"{size(operation.get('bytesPerSecond') or 0)}/s"
        remaining = seconds(eta) if eta is not None else "-"
        phase = str(operation.get("phase") or operation.get("status"))
        if self._task is None:
            self._task = self._progress.add_task(phase, total=total, rate=rate, eta=remaining)
        self._progress.update(
            self._task,
            description=phase,
            total=total,
            completed=progress.get("bytesDone", 0),
            rate=rate,
            eta=remaining,
        )


async def follow_operation(
    client: AgentClient,
    operation_id: str,
    on_update: Callable[[Body], None] = lambda _: None,
    *,
    poll_seconds: float = POLL_SECONDS,
) -> Body:
    """Poll ``/status`` until operation ``operation_id`` has ended and the agent's state has
    settled (no longer ACTIVATING or PAUSING); the last ``/status``.

    An agent that stops answering is polled on for :data:`UNREACHABLE_GRACE_SECONDS` (it
    resumes the operation after a restart); a newer operation replacing ours ends the wait."""
    silent_since: float | None = None
    while True:
        try:
            status = await client.status()
        except AgentUnreachable:
            now = time.monotonic()
            silent_since = silent_since or now
            if now - silent_since > UNREACHABLE_GRACE_SECONDS:
                raise
            await asyncio.sleep(poll_seconds)
            continue
        silent_since = None
        operation = status.get("operation") or {}
        if operation.get("id") == operation_id:
            on_update(operation)
            # The state follows the operation's end a moment later: wait for it to settle.
            if operation.get("status") != "running" and status.get("state") not in TRANSIENT:
                return status
        elif operation:
            return status  # replaced: the caller sees another id and says so
        await asyncio.sleep(poll_seconds)


def _print_json(document: Body) -> None:
    """Plain JSON (no colours, no wrapping) for scripts."""
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


async def _wait_for_activation(
    client: AgentClient, call: HandshakeCall, operation: Body, out: Console, err: Console
) -> int:
    operation_id = str(operation.get("id"))
    if call.json:
        status = await follow_operation(client, operation_id)
    else:
        with ProgressView(err) as view:
            status = await follow_operation(client, operation_id, view.update)
    final = status.get("operation") or {}
    if call.json:
        _print_json(status)
    else:
        print_status(out, status)
    if final.get("id") != operation_id:
        err.print(f"az-agent: operation {operation_id} was replaced by {final.get('id')}")
        return EXIT_FAILED
    if final.get("status") != "succeeded":
        err.print(f"az-agent: activation failed: {final.get('error')}", highlight=False)
        return EXIT_FAILED
    return EXIT_OK


async def run_handshake(call: HandshakeCall) -> int:
    """One command against the agent at ``call.url``; the exit code (0 ok, 1 refused, failed
    or unreachable)."""
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    async with AgentClient(call.url, call.token) as client:
        try:
            if call.command == "status":
                code, body = 200, await client.status()
            elif call.command == "pause":
                code, body = await client.pause(force=call.pause_force, wait=call.pause_wait)
            elif call.command == "activate":
                code, body = await client.activate(call.zone, **call.activate_options)
            elif call.command == "resume":
                code, body = await client.resume()
            else:
                raise AssertionError(f"unknown command {call.command}")
            if call.command == "activate" and call.wait and code == 202:
                if not call.json:
                    print_answer(out, call, code, body)
                return await _wait_for_activation(client, call, body["operation"], out, err)
        except AgentRefused as exc:
            if call.json:
                _print_json({"httpStatus": exc.status, **exc.body})
            err.print(f"az-agent: {call.command}: {exc.line()}", highlight=False)
            return EXIT_FAILED
        except AgentUnreachable as exc:
            err.print(f"az-agent: {call.command}: agent unreachable: {exc}", highlight=False)
            return EXIT_FAILED
    if call.json:
        _print_json(body)
    elif call.command == "status":
        print_status(out, body)
    else:
        print_answer(out, call, code, body)
    sys.stdout.flush()
    return EXIT_OK


__all__ = [
    "HandshakeCall",
    "ProgressView",
    "follow_operation",
    "phases_table",
    "print_status",
    "run_handshake",
]
