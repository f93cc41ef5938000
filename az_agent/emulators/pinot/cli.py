"""``az-agent pinot-emulator``: run the emulated controller until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys

from az_agent.emulators.pinot.cluster import EmulatorOptions
from az_agent.emulators.pinot.seed import SeedTable
from az_agent.emulators.pinot.server import EmulatorAuth, PinotEmulator
from az_agent.emulators.pinot.state import GeneratorSpec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="az-agent pinot-emulator", description="An emulated Apache Pinot controller."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=9000, help="Port (0 = any free port).")
    parser.add_argument("--data", required=True, help="Directory for state and segment files.")
    parser.add_argument(
        "--seed-tables",
        default="",
        help="Tables to create at start: name[:OFFLINE|REALTIME[:partitions]],...",
    )
    parser.add_argument(
        "--segment-rate", type=float, default=0.0, help="Segments per minute per seeded table."
    )
    parser.add_argument(
        "--segment-size", type=int, default=64 << 10, help="Bytes per generated segment."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of generated segment bytes.")
    parser.add_argument("--gzip-level", type=int, default=0, choices=range(10), metavar="0-9")
    parser.add_argument("--basic-auth", default="", help="user:password required on every call.")
    parser.add_argument("--token", default="", help="Bearer token accepted on every call.")
    parser.add_argument("--tls-cert", default="", help="PEM certificate: serve HTTPS.")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert.")
    return parser


def _emulator(args: argparse.Namespace) -> PinotEmulator:
    seeds = [SeedTable.parse(s) for s in args.seed_tables.split(",") if s.strip()]
    auth = None
    if args.basic_auth or args.token:
        user, _, password = args.basic_auth.partition(":")
        auth = EmulatorAuth(user or None, password or None, args.token or None)
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key or None)
    generator = GeneratorSpec(args.segment_rate, args.segment_size) if args.segment_rate else None
    options = EmulatorOptions(
        seed=args.seed, segment_size=args.segment_size, gzip_level=args.gzip_level
    )
    return PinotEmulator(
        args.data,
        host=args.host,
        port=args.port,
        options=options,
        auth=auth,
        ssl_context=context,
        seed_tables=seeds,
        generator=generator,
    )


async def _serve(emulator: PinotEmulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with emulator:
        sys.stdout.write(f"pinot emulator listening on {emulator.url}\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the emulator; 0 on a clean stop, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    try:
        emulator = _emulator(args)
    except (ValueError, OSError, ssl.SSLError) as exc:
        sys.stderr.write(f"pinot-emulator: {exc}\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(emulator))
    return 0
