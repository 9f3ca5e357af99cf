"""Scrapes that arrive together share renders: a burst costs two renders, and
each answer copies the present after its request came (a real Metrics object
rendering on its own thread)."""

from __future__ import annotations

import asyncio

import pytest

from reconciler.fsm import State
from reconciler.metrics import Metrics, Snapshot

pytestmark = pytest.mark.timeout(30)


async def test_a_burst_of_scrapes_shares_two_renders_and_sequential_ones_are_fresh() -> None:
    copies = 0

    def snapshot() -> Snapshot:
        nonlocal copies
        copies += 1
        return Snapshot(resources={f"File/f{i}": State.IN_SYNC for i in range(copies)})

    metrics = Metrics(snapshot, version="test")
    bodies = await asyncio.gather(*(metrics.exposition() for _ in range(20)))
    assert copies <= 2
    assert all(content_type.startswith("text/plain") for _, content_type in bodies)
    assert b'name="f0"' in bodies[-1][0]
    before = copies
    first, _ = await metrics.exposition()
    second, _ = await metrics.exposition()
    assert copies == before + 2  # one after the other: each copies the present
    assert f'name="f{copies - 1}"'.encode() in second and first != second
