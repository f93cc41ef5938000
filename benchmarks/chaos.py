"""Randomized failover trials at scale: the chaos tier of ``tests/chaos`` as a command.

    python -m benchmarks.chaos --trials N [--seed S] [--store file|s3] [--zones 2,3]
        [--concurrency 8] [--speed X] [--s3-server seaweedfs|moto] [--traces] [--log-level L]

Runs ``N`` trials with seeds ``S, S + 1, ..., S + N - 1`` (``S`` random unless given, and
printed), each on a fresh bucket (a temporary directory, or a key prefix of one bucket of an S3
server started here: SeaweedFS by default), cycling through the zone counts given, and prints
the counts of trials, operations, faults and violations, every violation with the command that
replays its trial, and the anomalies seen (agents that exited or ignored a cancellation,
resources left unclosed). Exit status 1 when any trial broke an invariant, else 0.

``--trials 1 --seed S`` replays trial ``S``: the same plan (requests, signals, brownout windows,
their targets and simulated times). The agents' interleaving with real I/O is not replayed (nor
which requests a brownout hits), so a violation that depends on a race shows up again often, not
always: run the replay a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.chaos.engine import SPEED, TrialResult
from tests.chaos.runner import (
    Buckets,
    FileBuckets,
    NetworkBuckets,
    Summary,
    run_trials,
    s3_server,
    specs,
)

PROGRESS_EVERY = 100
KEPT_TRACES = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--trials", type=int, default=100, help="how many trials (default 100)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first trial")
    parser.add_argument("--store", choices=sorted(SPEED), default="file")
    parser.add_argument(
        "--zones", default="2,3", help="zone counts to cycle through, e.g. 2 or 2,3 (default)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="trials at once (default 8)")
    parser.add_argument(
        "--speed", type=float, default=0.0, help="trial clock speed-up (default: per store)"
    )
    parser.add_argument("--s3-server", choices=["seaweedfs", "moto"], default="seaweedfs")
    parser.add_argument(
        "--traces", action="store_true", help="print what happened in each violating trial"
    )
    parser.add_argument(
        "--log-level", default="", help="show the agents' logs at this level (default: none)"
    )
    args = parser.parse_args(argv)
    try:
        args.zone_counts = [int(z) for z in args.zones.split(",")]
    except ValueError:
        parser.error(f"--zones {args.zones!r}: expected numbers such as 2 or 2,3")
    if args.trials < 1 or args.concurrency < 1 or any(z < 2 for z in args.zone_counts):
        parser.error("--trials and --concurrency must be >= 1, every zone count >= 2")
    return args


@asynccontextmanager
async def buckets_for(store: str, server: str, root: Path) -> AsyncIterator[Buckets]:
    if store == "file":
        yield FileBuckets(root)
        return
    backend = s3_server(server)
    await asyncio.to_thread(backend.start)
    try:
        settings, secrets = await backend.new_bucket()
        async with NetworkBuckets.opened(settings, secrets) as buckets:
            yield buckets
    finally:
        await asyncio.to_thread(backend.stop)


async def run(args: argparse.Namespace) -> Summary:
    base = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    print(
        f"chaos: {args.trials} trials from seed {base} on {args.store}, zones "
        f"{args.zones}, {args.concurrency} at a time",
        flush=True,
    )
    done = 0

    def progress(result: TrialResult) -> None:
        nonlocal done
        done += 1
        if result.violations:
            for violation in result.violations:
                print(f"  {violation}", file=sys.stderr, flush=True)
        if done % PROGRESS_EVERY == 0:
            print(f"  {done}/{args.trials} trials", file=sys.stderr, flush=True)

    level = logging.CRITICAL + 1
    if args.log_level:
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
        level = logging.getLevelName(args.log_level.upper())
    with tempfile.TemporaryDirectory(prefix="chaos-") as root:
        async with buckets_for(args.store, args.s3_server, Path(root)) as buckets:
            trials = specs(base, args.trials, args.store, args.zone_counts, args.speed)
            summary = await run_trials(
                trials,
                {args.store: buckets},
                concurrency=args.concurrency,
                on_result=progress,
                log_level=level,
            )
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Cancelled agents leave file handles to the garbage collector: counted, not printed.
    warnings.simplefilter("error", ResourceWarning)
    summary = asyncio.run(run(args))
    print(summary.report())
    if args.traces and summary.traces:
        kept = dict(list(summary.traces.items())[:KEPT_TRACES])
        summary.traces = kept
        print(summary.trace_report())
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
