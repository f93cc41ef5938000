"""The ``az-agent`` command line.

Exit codes: 0 success, 1 a check or run failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
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
    commands.add_parser(
        "pinot-emulator", help="run the Pinot controller emulator (see --help)", add_help=False
    )
    return parser


def effective_config_document(config: AgentConfig) -> dict[str, Any]:
    """The configuration as the agent will use it, with the secrets it will read redacted."""
    document = config.model_dump(mode="json", by_alias=True)
    service = document["az-service"]["config"]
    service["zone"] = config.zone
    service["cloudStorage"] = config.storage.model_dump(mode="json", by_alias=True)
    storage = config.storage
    keys = STORAGE_SECRET_KEYS[storage.type] if storage.use_secret else ()
    document["secrets"] = {
        f"{service['secretsDir']}/{storage.secret_name}/{key}": "<redacted>" for key in keys
    }
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


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["pinot-emulator"]:
        from az_agent.emulators.pinot.cli import main as emulator_main

        return int(emulator_main(args_list[1:]))
    args = build_parser().parse_args(args_list)
    try:
        config = load_config(args.config)
        if args.command == "config":
            return _show_config(config)
        if args.command == "storage-check":
            return asyncio.run(_storage_check(config))
    except ConfigError as exc:
        sys.stderr.write(f"az-agent: configuration error: {exc}\n")
        return EXIT_CONFIG
    except DriverError as exc:
        sys.stderr.write(f"az-agent: {type(exc).__name__}: {exc}\n")
        return EXIT_FAILED
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
