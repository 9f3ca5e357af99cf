"""The pacer keeps paced work to a few milliseconds per loop iteration, lets its
waiters go in order, and skips one cancelled while it waits (a real loop)."""

from __future__ import annotations

import asyncio
import time

import pytest

from reconciler.pacing import Pacer

pytestmark = pytest.mark.timeout(30)


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_a_pause_under_budget_does_not_wait() -> None:
    pacer = Pacer(budget=0.05)
    for _ in range(100):
        await pacer.pause()
    assert pacer.waited == 0


async def test_many_tasks_of_paced_work_leave_the_loop_ticking() -> None:
    pacer = Pacer(budget=0.004)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    finished: list[int] = []

    async def work(n: int) -> None:
        for _ in range(3):
            await pacer.pause()
            _busy(0.0005)  # 500 tasks x 3 x 0.5 ms: 0.75 s of work in all
        finished.append(n)

    tick = asyncio.create_task(ticker())
    async with asyncio.TaskGroup() as group:
        for n in range(500):
            group.create_task(work(n))
    done.set()
    await tick
    assert sorted(finished) == list(range(500))
    assert pacer.waited > 0
    # one iteration: its budget, one waiter past it, the ticker: well under 50 ms
    assert max(gaps) < 0.03, f"the loop stalled {max(gaps) * 1000:.0f} ms"


async def test_waiters_go_in_order_and_a_cancelled_one_is_skipped() -> None:
    pacer = Pacer(budget=0.0)  # every pause after the first in an iteration waits
    order: list[int] = []

    async def one(n: int) -> None:
        await pacer.pause()
        order.append(n)

    await pacer.pause()  # opens the iteration: the next ones wait
    tasks = [asyncio.create_task(one(n)) for n in range(5)]
    await asyncio.sleep(0)  # each reached its pause
    tasks[2].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 3, 4]
