"""How late the daemon's event loop runs: a lag monitor and a stall watchdog.

Everything in the daemon shares one asyncio loop, so anything that blocks it (a
store query, a large copy, a slow callback) delays every pass, watch event and
HTTP answer at once. `LoopLag.run` is a task that sleeps `interval` (10 ms)
again and again and measures how much later than asked it wakes: that lag is
how long the loop was busy with something else. Each lag goes to a histogram
(`reconciler_event_loop_lag_seconds`), the longest is kept with when it
happened, and `/api/v1/status` shows it (`eventLoop`), so a test or an operator
reads the longest stall from outside the process.

A lag says that the loop stalled, not where. A watchdog thread looks at the loop
every `interval`: once the loop has not ticked for `capture_after` it samples the
loop thread's stack (`sys._current_frames`) every `interval` while the stall
lasts, so the longest stall comes with the code that held the loop most (the
stack sampled most often: a long stall is often many callbacks in one loop
iteration), and a stall over `warn_after` is logged with it. A stall inside C
code that keeps the GIL (a garbage collection, a large `json.dumps`) cannot be
sampled: its `where` is empty or shows what ran around it.

A quiet loop is looked at less often: after a second in which every lag stayed
under `quiet_lag` (`QUIET_LAG`), both sleep `IDLE_INTERVAL` until a lag reaches it again (ten
looks a second cost an idle daemon about 2.5% of a core). A stall that begins
and ends within one idle sleep is not measured; the first one that shows brings
the fine looks back.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LoopLag", "Stall"]

log = logging.getLogger("reconciler.looplag")

INTERVAL = 0.01
"""Seconds the monitor sleeps between two looks: a stall is measured to within it."""
IDLE_INTERVAL = 0.1
"""Seconds between looks while the loop is quiet."""
QUIET_LAG = 0.002
QUIET_LOOKS = 100
"""Looks in a row under QUIET_LAG after which the loop counts as quiet (1 s)."""
CAPTURE_AFTER = 0.025
"""A loop not ticking for this long has its stack taken (the target is 50 ms)."""
WARN_AFTER = 0.25
"""A stall this long is logged with its stack (at most once a minute)."""
WARN_EVERY = 60.0
STACK_FRAMES = 12
"""Innermost frames kept of a stall's stack."""
MAX_SAMPLES = 200
"""Stack samples kept of one stall (2 s of it)."""


@dataclass(frozen=True, slots=True)
class Stall:
    """One stall of the loop: how long, when it ended (unix time), and the loop
    thread's innermost frames while it lasted (empty when it was too short to
    catch)."""

    seconds: float
    at: float
    where: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 6), "at": self.at, "where": list(self.where)}


class LoopLag:
    """Measures the lag of the loop it runs on; `run` is the task doing it."""

    def __init__(
        self,
        observe: Callable[[float], None] | None = None,
        *,
        interval: float = INTERVAL,
        capture_after: float = CAPTURE_AFTER,
        warn_after: float = WARN_AFTER,
        quiet_lag: float = QUIET_LAG,
    ) -> None:
        self._observe = observe
        self.interval = interval
        self.capture_after = capture_after
        self.warn_after = warn_after
        self.quiet_lag = quiet_lag
        self.longest: Stall | None = None
        """The longest stall since the monitor started."""
        self.samples = 0
        self._tick = time.monotonic()
        """When the loop last ran the monitor (read by the watchdog thread)."""
        self._sleep = interval
        """How long the monitor sleeps after `_tick` (read by the watchdog thread)."""
        self._caught: tuple[float, list[tuple[str, ...]]] | None = None
        """(tick, stacks) the watchdog sampled during the stall after that tick."""
        self._warned = 0.0

    def status(self) -> dict[str, Any]:
        """The monitor's figures for `/api/v1/status`."""
        longest = self.longest
        return {
            "lagMaxSeconds": 0.0 if longest is None else round(longest.seconds, 6),
            "longestStall": None if longest is None else longest.to_json(),
            "samples": self.samples,
            "intervalSeconds": self.interval,
        }

    async def run(self) -> None:
        """Measure until cancelled; the watchdog thread lives as long."""
        stop = threading.Event()
        watchdog = threading.Thread(
            target=self._watch,
            args=(threading.get_ident(), stop),
            name="loop watchdog",
            daemon=True,
        )
        self._tick = time.monotonic()
        watchdog.start()
        quiet = 0
        try:
            while True:
                self._sleep = sleep = self.interval if quiet < QUIET_LOOKS else IDLE_INTERVAL
                self._tick = before = time.monotonic()
                await asyncio.sleep(sleep)
                lag = max(0.0, time.monotonic() - before - sleep)
                self._measured(lag, before)
                quiet = quiet + 1 if lag < self.quiet_lag else 0
        finally:
            stop.set()
            watchdog.join(timeout=1.0)

    def _measured(self, lag: float, before: float) -> None:
        self.samples += 1
        if self._observe is not None:
            self._observe(lag)
        caught, self._caught = self._caught, None
        longest = self.longest
        if longest is not None and lag <= longest.seconds and lag < self.warn_after:
            return
        where: tuple[str, ...] = ()
        if caught is not None and caught[0] == before and caught[1]:
            where = Counter(caught[1]).most_common(1)[0][0]
        stall = Stall(lag, time.time(), where)
        if longest is None or lag > longest.seconds:
            self.longest = stall
        if lag >= self.warn_after and time.monotonic() - self._warned >= WARN_EVERY:
            self._warned = time.monotonic()
            log.warning(
                "event loop blocked for %.0f ms%s",
                lag * 1000,
                ", in:\n  " + "\n  ".join(where) if where else "",
            )

    def _watch(self, loop_thread: int, stop: threading.Event) -> None:
        """The watchdog: sample the loop thread's stack while a stall lasts."""
        while not stop.wait(self.interval if self._sleep <= self.interval else IDLE_INTERVAL):
            tick = self._tick
            if time.monotonic() - tick - self._sleep < self.capture_after - self.interval:
                continue
            frame = sys._current_frames().get(loop_thread)
            if frame is None:
                continue
            stack = tuple(
                f"{f.filename}:{f.lineno} {f.name}"
                for f in traceback.extract_stack(frame)[-STACK_FRAMES:]
            )
            caught = self._caught
            if self._tick != tick:
                continue  # the stall ended meanwhile
            if caught is None or caught[0] != tick:
                self._caught = (tick, [stack])
            elif len(caught[1]) < MAX_SAMPLES:
                caught[1].append(stack)
