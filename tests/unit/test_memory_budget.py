"""The store-wide memory budget of uploads: bounded, first come first served, cancel-safe."""

from __future__ import annotations

import asyncio
import random

import pytest

from az_agent.drivers.storage.memory_budget import MemoryBudget


async def settle(turns: int = 5) -> None:
    """Let the loop run the tasks that are ready, ``turns`` times over: enough for a grant to
    reach its waiter, with no wall-clock wait (the budget does no I/O)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def _hold(budget: MemoryBudget, size: int, order: list[int], release: asyncio.Event) -> None:
    async with budget.holding(size):
        order.append(size)
        await release.wait()


async def test_a_request_waits_until_the_bytes_it_needs_are_given_back() -> None:
    budget = MemoryBudget(10)
    order: list[int] = []
    first, second = asyncio.Event(), asyncio.Event()
    holding = asyncio.create_task(_hold(budget, 7, order, first))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(_hold(budget, 4, order, second))
    await settle()
    assert (order, budget.used) == ([7], 7)
    first.set()
    await holding
    await asyncio.sleep(0)
    assert (order, budget.used) == ([7, 4], 4)
    second.set()
    await waiting
    assert budget.used == 0


async def test_a_large_request_is_not_overtaken_by_small_ones_arriving_after_it() -> None:
    budget = MemoryBudget(10)
    order: list[int] = []
    release = asyncio.Event()
    tasks = [asyncio.create_task(_hold(budget, 6, order, release))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(_hold(budget, 8, order, release)))
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(_hold(budget, 2, order, release)))  # would fit beside 6
    await settle()
    assert order == [6]
    release.set()
    await asyncio.gather(*tasks)
    assert order == [6, 8, 2]
    assert budget.used == 0


async def test_a_request_larger_than_the_budget_is_served_alone() -> None:
    budget = MemoryBudget(10)
    async with budget.holding(25):
        assert budget.used == 10
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02), budget.holding(1):
                pass
    assert budget.used == 0


async def test_a_cancelled_waiter_lets_the_ones_behind_it_through() -> None:
    budget = MemoryBudget(10)
    order: list[int] = []
    release = asyncio.Event()
    first = asyncio.create_task(_hold(budget, 5, order, release))
    await asyncio.sleep(0)
    blocked = asyncio.create_task(_hold(budget, 9, order, release))
    await asyncio.sleep(0)
    behind = asyncio.create_task(_hold(budget, 5, order, release))
    await settle()
    assert order == [5]
    blocked.cancel()
    await settle()
    assert order == [5, 5]  # served beside the first once the 9 left the queue
    release.set()
    await asyncio.gather(first, behind)
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert budget.used == 0


async def test_random_holders_never_exceed_the_budget_and_all_finish() -> None:
    """Holders of random sizes, holding for a random number of loop turns, some cancelled
    while they wait or hold: the bytes held never pass the limit, and everything is given
    back (the interleaving follows the seed alone)."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    budget = MemoryBudget(100)
    peak = 0

    async def holder(size: int, turns: int) -> None:
        nonlocal peak
        async with budget.holding(size):
            peak = max(peak, budget.used)
            assert budget.used <= budget.limit, seed
            await settle(turns)

    tasks = [asyncio.create_task(holder(rng.randint(1, 150), rng.randrange(6))) for _ in range(300)]
    for task in rng.sample(tasks, 60):
        await settle(rng.randrange(4))
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert budget.used == 0, seed
    assert 50 < peak <= 100, seed
    assert sum(not t.cancelled() for t in tasks) >= 240, seed
