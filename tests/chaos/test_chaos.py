"""Randomized failover trials against the safety checker (see ``engine.py`` and ``checker.py``).

300 trials per run: on the ``file`` store and on SeaweedFS (S3), with two and three zones of
two agents each. The base seed is random per run unless ``CHAOS_SEED`` is set; it is printed
with the counts, and every violation names its trial's seed and the command that replays it.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from tests.chaos.runner import FileBuckets, NetworkBuckets, Summary, run_trials, specs
from tests.servers.base import StorageBackend

TRIALS = {("file", 2): 110, ("file", 3): 90, ("s3", 2): 60, ("s3", 3): 40}
CONCURRENCY = 8


@pytest.fixture(scope="module")
def base_seed() -> int:
    configured = os.environ.get("CHAOS_SEED")
    return int(configured) if configured else random.SystemRandom().randrange(1, 10**9)


def _report(summary: Summary, base: int, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        sys.stdout.write(f"\nchaos base seed {base} (CHAOS_SEED={base} replays these plans)\n")
        sys.stdout.write(summary.report() + "\n")
    assert not summary.violations, f"{summary.report()}\n{summary.trace_report()}"


@pytest.mark.parametrize("zones", [2, 3])
async def test_file_store(
    zones: int, base_seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    count = TRIALS[("file", zones)]
    base = base_seed + zones * 100_000
    summary = await run_trials(
        specs(base, count, "file", [zones]),
        {"file": FileBuckets(tmp_path)},
        concurrency=CONCURRENCY,
    )
    assert summary.trials == count
    _report(summary, base_seed, capsys)


@pytest.mark.parametrize("zones", [2, 3])
async def test_s3(
    zones: int, base_seed: int, chaos_s3: StorageBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    count = TRIALS[("s3", zones)]
    base = base_seed + 500_000 + zones * 100_000
    settings, secrets = await chaos_s3.new_bucket()
    async with NetworkBuckets.opened(settings, secrets) as buckets:
        summary = await run_trials(
            specs(base, count, "s3", [zones]), {"s3": buckets}, concurrency=CONCURRENCY
        )
    assert summary.trials == count
    _report(summary, base_seed, capsys)
