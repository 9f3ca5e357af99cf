"""Long work on the event loop, a few milliseconds per loop iteration (decision 0128).

A loop iteration runs every callback that is ready, one after another: when a
batch of 2,048 observations comes back, 2,048 resource tasks wake in the same
iteration, and a 12,000-item API answer is encoded between two timer ticks.
Each piece is short, their sum holds the loop (timers, watches, the API) for
100 ms and more. `Pacer.pause` is the checkpoint such work passes between two
pieces: it returns at once while the current iteration has used less than
`budget` of paced work, and otherwise queues the caller until a later iteration.

Waiters leave the queue in order, a few per iteration: `_release` runs once an
iteration while some wait and lets go as many as fit the budget, at what the
iterations cost per waiter let go (whatever else held them: the API, a
collection, counts too; the estimate rises at once and falls slowly, and a
batch at most doubles from one iteration to the next). So the loop ticks every
few milliseconds however many tasks wait, and a waiter is never passed over.

One pacer serves a daemon (its engine, its API views and server), so their work
shares one budget; nothing here is global.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

__all__ = ["BUDGET", "Pacer"]

BUDGET = 0.004
"""Seconds of paced work one loop iteration may run before the rest waits."""
_FIRST = 16
"""Waiters let go in the first iteration of a queue; it then adapts."""
_MOST = 1024


class Pacer:
    """The checkpoint of paced work on one event loop (see the module)."""

    def __init__(self, budget: float = BUDGET) -> None:
        self.budget = budget
        self._began: float | None = None
        """When the paced work of the current iteration began (None: none yet)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop `_began` was taken on (a pacer may outlive a loop in tests)."""
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._released_at: float | None = None
        """When `_release` last ran while waiters remain (None: none scheduled)."""
        self._batch = _FIRST
        self._let_go = 0
        """Waiters the last `_release` let go (0: none, or the queue emptied)."""
        self._cost = 0.0
        """Seconds of an iteration per waiter let go in it, as last estimated."""
        self.waited = 0
        """How many pauses had to wait (for tests and curiosity)."""

    def busy(self) -> bool:
        """Whether the current iteration has used its budget (or others wait)."""
        if self._waiters:
            return True
        now = time.perf_counter()
        loop = asyncio.get_running_loop()
        if self._began is None or self._loop is not loop:  # the iteration's first
            self._began, self._loop = now, loop
            loop.call_soon(self._next_iteration)
            return False
        return now - self._began > self.budget

    async def pause(self) -> None:
        """Return at once, or after waiting for a later iteration when this one
        has run its budget of paced work; waiters go on in the order they came."""
        if not self.busy():
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append(future)
        self.waited += 1
        if self._released_at is None:
            self._released_at = time.perf_counter()
            loop.call_soon(self._release)
        await future

    def _next_iteration(self) -> None:
        self._began = None

    def _release(self) -> None:
        """Let the next waiters go; scheduled again (for the next iteration) while
        any wait. The time since the last run is how long the last iteration took
        with the waiters let go then: it sizes the next batch."""
        now = time.perf_counter()
        if self._let_go:  # what the last iteration cost per waiter let go in it
            cost = (now - (self._released_at or now)) / self._let_go
            # up at once, down slowly: an iteration of cheap waiters says little
            # about the next, whose waiters may each run a whole action
            self._cost = cost if cost > self._cost else 0.8 * self._cost + 0.2 * cost
            fit = int(self.budget / self._cost) if self._cost > 0 else _MOST
            self._batch = max(1, min(fit, 2 * self._batch, _MOST))
        let_go = 0
        waiters = self._waiters
        while waiters and let_go < self._batch:
            future = waiters.popleft()
            if not future.done():  # a waiter cancelled meanwhile is skipped
                future.set_result(None)
                let_go += 1
        if waiters:
            self._released_at, self._let_go = now, let_go
            asyncio.get_running_loop().call_soon(self._release)
        else:
            self._released_at, self._let_go = None, 0
