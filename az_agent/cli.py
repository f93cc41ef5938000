"""The ``az-agent`` command line.

Exit codes: 0 success, 1 a check or run failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from az_agent import __version__
from az_agent.agent.config import AgentConfig, ConfigError, load_config
from az_agent.agent.secrets import STORAGE_SECRET_KEYS, read_storage_secrets
from az_agent.agent.storage_check import StorageProbe
from az_agent.drivers.errors import DriverError
from az_agent.drivers.storage.factory import open_object_store

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML configuration (keys as in the Helm values); default: embedded defaults",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="az-agent", description="Cross-zone recovery agent for Pinot and PostgreSQL."
    )
    parser.add_argument("--version", action="version", version=f"az-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("config", help="print the effective configuration, secrets redacted")
    _add_config_flag(show)
    check = commands.add_parser("storage-check", help="probe the configured object store")
    _add_config_flag(check)
    run = commands.add_parser("run", help="run the agent: lease, backups, HTTP API")
    _add_config_flag(run)
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sandbox = commands.add_parser(
        "sandbox", help="a local two-zone stack: bucket, Pinot and PostgreSQL, two agents"
    )
    sandbox.add_argument("--dir", default="./az-agent-sandbox", help="where the stack keeps data")
    sandbox.add_argument("--no-postgres", action="store_true", help="leave PostgreSQL out")
    sandbox.add_argument(
        "--ports",
        nargs=2,
        type=int,
        default=(8081, 8082),
        metavar=("AZ1", "AZ2"),
        help="HTTP ports of the two agents (default: 8081 8082)",
    )
    sandbox.add_argument("--log-level", default="WARNING", help="agent log level")
    commands.add_parser(
        "pinot-emulator", help="run the Pinot controller emulator (see --help)", add_help=False
    )
    _add_handshake_commands(commands)
    drill = commands.add_parser(
        "drill", help="rehearse planned and unplanned failovers on a local stack; RPO and RTO"
    )
    drill.add_argument("--segments", type=int, default=4, help="segments seeded (default 4)")
    drill.add_argument("--segment-size-kb", type=int, default=64, help="segment size (64)")
    drill.add_argument("--rows", type=int, default=200, help="rows per sample table (200)")
    drill.add_argument("--no-postgres", action="store_true", help="leave PostgreSQL out")
    drill.add_argument("--dir", help="keep the stack's data here (default: a temporary folder)")
    drill.add_argument("--lease-ttl", type=int, default=4, help="agents' lease TTL, s (4)")
    drill.add_argument("--json", action="store_true", help="print the report as one JSON document")
    return parser


def _add_handshake_commands(commands: Any) -> None:
    """``pause``, ``activate``, ``status``, ``resume``: the handshake against a running agent."""
    helps = {
        "pause": "POST /pause to the agent at --url (the zone failed away from)",
        "activate": "POST /activate to the agent at --url (the zone taking over)",
        "status": "GET /status of the agent at --url",
        "resume": "POST /resume to the agent at --url (lift silences, resume in place)",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--url", required=True, help="the agent, e.g. http://localhost:8081")
        sub.add_argument(
            "--token-file", help="file holding the API token (default: $AZ_AGENT_TOKEN, if set)"
        )
        sub.add_argument("--json", action="store_true", help="print the server's JSON body")
    pause = commands.choices["pause"]
    pause.add_argument("--force", action="store_true", help="do not wait for consuming segments")
    pause.add_argument("--wait-seconds", type=int, help="server-side wait before answering 202")
    activate = commands.choices["activate"]
    activate.add_argument("--zone", required=True, help="the source zone")
    activate.add_argument("--latest-time", help="restore as of (RFC 3339, Unix s or ms)")
    activate.add_argument("--batch-size", type=int, help="segments per rehydration batch")
    activate.add_argument("--force", action="store_true", help="even while the source lease lives")
    activate.add_argument("--dry-run", action="store_true", help="only show the plan")
    activate.add_argument("--namespace", help="pause the source through the Kubernetes API first")
    activate.add_argument("--force-pause", action="store_true", help="with --namespace: force it")
    activate.add_argument(
        "--wait", action="store_true", help="follow /status with a progress bar until it ends"
    )


def _handshake(args: argparse.Namespace) -> int:
    import os

    from az_agent.agent.http.client import read_token
    from az_agent.sandbox.handshake import HandshakeCall, run_handshake

    try:
        token = read_token(args.token_file, dict(os.environ))
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"az-agent: --token-file: {exc}\n")
        return EXIT_CONFIG
    if not args.url.startswith(("http://", "https://")):
        sys.stderr.write(f"az-agent: --url {args.url!r} must start with http:// or https://\n")
        return EXIT_CONFIG
    call = HandshakeCall(args.command, args.url, token, json=args.json)
    if args.command == "pause":
        call.pause_force, call.pause_wait = args.force, args.wait_seconds
    if args.command == "activate":
        call.zone, call.wait = args.zone, args.wait
        call.activate_options = {
            "latestTime": args.latest_time,
            "batchSize": args.batch_size,
            "force": args.force,
            "dryRun": args.dry_run,
            "namespace": args.namespace,
            "forcePause": args.force_pause,
        }
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_handshake(call))
    return EXIT_FAILED


def effective_config_document(config: AgentConfig) -> dict[str, Any]:
    """The configuration as the agent will use it, with the secrets it will read redacted."""
    document = config.model_dump(mode="json", by_alias=True)
    service = document["az-service"]["config"]
    service["zone"] = config.zone
    service["cloudStorage"] = config.storage.model_dump(mode="json", by_alias=True)
    storage = config.storage
    keys = STORAGE_SECRET_KEYS[storage.type] if storage.use_secret else ()
    files = [(storage.secret_name, key) for key in keys]
    agent = config.service
    if agent.postgres.password_secret and agent.postgres.databases:
        files.append((agent.postgres.password_secret, "password"))
    if agent.pinot.auth_secret:
        files.append((agent.pinot.auth_secret, "username|password or token"))
    if agent.alertmanager.token_secret:
        files.append((agent.alertmanager.token_secret, "token"))
    document["secrets"] = {f"{service['secretsDir']}/{n}/{k}": "<redacted>" for n, k in files}
    return document


def _show_config(config: AgentConfig) -> int:
    sys.stdout.write(yaml.safe_dump(effective_config_document(config), sort_keys=False))
    return EXIT_OK


async def _storage_check(config: AgentConfig) -> int:
    secrets = await asyncio.to_thread(read_storage_secrets, config)
    storage = config.storage
    sys.stdout.write(f"storage-check: type={storage.type} zone={config.zone}\n")
    store = await open_object_store(storage, secrets)
    try:
        results = await StorageProbe(store, config.zone, storage.part_size_mib << 20).run()
    finally:
        await store.close()
    for result in results:
        sys.stdout.write(result.line() + "\n")
    passed = sum(r.ok for r in results)
    verdict = "all capabilities present" if passed == len(results) else "NOT usable for failover"
    sys.stdout.write(f"{passed}/{len(results)} probes passed: {verdict}\n")
    return EXIT_OK if passed == len(results) else EXIT_FAILED


def _run(config: AgentConfig, log_level: str) -> int:
    from az_agent.agent.observability.logs import configure_logging
    from az_agent.agent.wiring import StartupRefused, run_agent

    configure_logging(log_level.upper())
    try:
        asyncio.run(run_agent(config))
    except StartupRefused as exc:
        sys.stderr.write(f"az-agent: refusing to start: {exc}\n")
        return EXIT_CONFIG
    return EXIT_OK


def _sandbox(args: argparse.Namespace) -> int:
    from pathlib import Path

    from az_agent.agent.observability.logs import configure_logging
    from az_agent.sandbox.stack import SandboxOptions, run_sandbox

    configure_logging(args.log_level.upper())
    options = SandboxOptions(
        base_dir=Path(args.dir), ports=tuple(args.ports), postgres=not args.no_postgres
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before the stack handles signals
        asyncio.run(run_sandbox(options))
    sys.stdout.write("sandbox stopped\n")
    return EXIT_OK


def _drill(args: argparse.Namespace) -> int:
    """Exit 0 only when every phase ran and nothing was lost."""
    import json
    from pathlib import Path

    from rich.console import Console

    from az_agent.sandbox.drill import DrillOptions, run_drill

    if min(args.segments, args.segment_size_kb, args.rows, args.lease_ttl) < 1:
        sys.stderr.write("az-agent: drill: sizes and --lease-ttl must be at least 1\n")
        return EXIT_CONFIG
    if args.dir and Path(args.dir).exists() and any(Path(args.dir).iterdir()):
        sys.stderr.write(f"az-agent: drill: --dir {args.dir} is not empty: a drill starts afresh\n")
        return EXIT_CONFIG
    options = DrillOptions(
        segments=args.segments,
        segment_size_kb=args.segment_size_kb,
        rows=args.rows,
        postgres=not args.no_postgres,
        directory=Path(args.dir) if args.dir else None,
        lease_ttl_seconds=args.lease_ttl,
    )
    progress = Console(stderr=True, highlight=False, soft_wrap=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before the drill handles signals
        report = asyncio.run(run_drill(options, progress))
        if args.json:
            sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        else:
            out = Console(highlight=False)
            report.render(out if out.is_terminal else Console(highlight=False, width=120))
        return EXIT_OK if report.passed else EXIT_FAILED
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["pinot-emulator"]:
        from az_agent.emulators.pinot.cli import main as emulator_main

        return int(emulator_main(args_list[1:]))
    args = build_parser().parse_args(args_list)
    level = getattr(args, "log_level", "INFO")
    if level.upper() not in LOG_LEVELS:
        choices = ", ".join(LOG_LEVELS)
        sys.stderr.write(f"az-agent: --log-level {level!r} is not one of {choices}\n")
        return EXIT_CONFIG
    if args.command == "sandbox":
        return _sandbox(args)
    if args.command in ("pause", "activate", "status", "resume"):
        return _handshake(args)
    if args.command == "drill":
        return _drill(args)
    try:
        config = load_config(args.config)
        if args.command == "config":
            return _show_config(config)
        if args.command == "storage-check":
            return asyncio.run(_storage_check(config))
        if args.command == "run":
            return _run(config, args.log_level)
    except ConfigError as exc:
        sys.stderr.write(f"az-agent: configuration error: {exc}\n")
        return EXIT_CONFIG
    except DriverError as exc:
        sys.stderr.write(f"az-agent: {type(exc).__name__}: {exc}\n")
        return EXIT_FAILED
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
