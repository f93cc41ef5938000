"""SIGTERM and SIGINT for a long-running command: the first stops it, later ones wait.

The first signal cancels the command's main task; later ones are logged and change nothing, so
an impatient second SIGTERM cannot cut a clean stop short (the agent's lease release, the
sandbox's PostgreSQL servers). SIGKILL remains the way to stop without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(again: str) -> Iterator[list[signal.Signals]]:
    """Within the block, the first signal cancels the current task; ``again`` is logged for
    the others. Yields the signals received (empty until the first)."""
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        if received:
            log.warning("%s again: %s", sig.name, again)
            return
        received.append(sig)
        main.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        yield received
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
