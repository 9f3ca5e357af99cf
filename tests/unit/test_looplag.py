"""The event loop lag monitor on a real loop: a stall made on purpose is measured,
kept as the longest with the code that made it, and observed in the histogram."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler import looplag
from reconciler.looplag import LoopLag
from reconciler.metrics import Metrics, Snapshot


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # blocking on purpose: the stall under test


class _Ticks:
    """Counts the monitor's samples and lets a test await the next few."""

    def __init__(self, also: Callable[[float], None] | None = None) -> None:
        self.seen = 0
        self._also = also
        self._next = asyncio.Event()

    def observe(self, lag: float) -> None:
        self.seen += 1
        if self._also is not None:
            self._also(lag)
        self._next.set()

    async def wait(self, n: int) -> None:
        until = self.seen + n
        while self.seen < until:
            self._next.clear()
            await self._next.wait()


async def test_a_stall_is_measured_with_the_stack_that_held_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(Snapshot, version="test")
    ticks = _Ticks(metrics.loop_lag.observe)
    lag = LoopLag(ticks.observe, warn_after=0.1)
    task = asyncio.create_task(lag.run(), name="loop lag")
    try:
        await ticks.wait(3)
        assert lag.longest is not None and lag.longest.seconds < 0.1
        with caplog.at_level(logging.WARNING, logger="reconciler.looplag"):
            _hold_the_loop(0.15)
            await ticks.wait(2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    longest = lag.longest
    assert longest is not None
    assert 0.13 <= longest.seconds < 0.3
    assert any("_hold_the_loop" in frame for frame in longest.where), longest.where
    status = lag.status()
    assert status["lagMaxSeconds"] == round(longest.seconds, 6)
    assert status["longestStall"]["where"] == list(longest.where)
    assert "event loop blocked for" in caplog.text and "_hold_the_loop" in caplog.text
    text = metrics.render(Snapshot()).decode()
    name = "reconciler_event_loop_lag_seconds"
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    count = next(s.value for s in family.samples if s.name.endswith("_count"))
    slow = next(
        s.value for s in family.samples if s.name.endswith("_bucket") and s.labels["le"] == "0.1"
    )
    assert count == lag.samples and count - slow >= 1  # the stall is above 100 ms


async def test_a_quiet_loop_has_no_stall_to_show() -> None:
    ticks = _Ticks()
    lag = LoopLag(ticks.observe)
    task = asyncio.create_task(lag.run(), name="loop lag")
    try:
        await ticks.wait(5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert lag.status()["lagMaxSeconds"] < 0.05
    assert lag.longest is not None and lag.longest.where == ()


async def test_a_quiet_loop_is_looked_at_less_often_until_a_stall_shows() -> None:
    """After QUIET_LOOKS looks under quiet_lag the monitor sleeps IDLE_INTERVAL (an
    idle daemon's CPU); the first stall it sees brings the fine looks back. The quiet
    threshold is 50 ms here, not 2 ms: a busy machine (CI) lags a few ms now and then."""
    ticks = _Ticks()
    lag = LoopLag(ticks.observe, quiet_lag=0.05)
    task = asyncio.create_task(lag.run(), name="loop lag")
    try:
        await ticks.wait(looplag.QUIET_LOOKS - 1)
        assert lag._sleep == lag.interval, "quiet before QUIET_LOOKS looks"
        await ticks.wait(3)
        assert lag._sleep == looplag.IDLE_INTERVAL
        started, seen = time.monotonic(), ticks.seen
        await ticks.wait(3)
        assert time.monotonic() - started >= 2 * looplag.IDLE_INTERVAL, "still looking often"
        _hold_the_loop(0.15)  # longer than an idle sleep: it shows as a lag
        await ticks.wait(1)
        assert lag.longest is not None and lag.longest.seconds >= 0.04
        assert lag._sleep == lag.interval
        assert ticks.seen > seen
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
