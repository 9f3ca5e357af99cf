"""The daemon's pass claims (decision 0126): which resources a pass holds, when
they are let go, and how a revision pass waits for the drift passes in flight."""

from __future__ import annotations

import asyncio

import pytest

from reconciler.daemon.claims import Claims
from reconciler.model import DesiredState

pytestmark = pytest.mark.timeout(10)


def test_a_claim_holds_its_ids_and_their_dependents_until_each_settles() -> None:
    released: list[int] = []
    claims = Claims(lambda: released.append(1))
    claim = claims.take({"Command/slow", "File/a"})
    assert not claims.free("Command/slow", ())
    assert not claims.free("File/b", ("File/a",)), "a dependency mid-pass is held too"
    assert claims.free("File/b", ())
    claims.settled("File/a")
    assert claims.free("File/b", ("File/a",)) and released == [1]
    again = claims.take({"File/a"})  # a drift pass takes up what settled
    claims.end(claim)
    assert claims.free("Command/slow", ())
    assert not claims.free("File/a", ()), "the first pass's end lets go of its own ids only"
    claims.end(again)
    assert claims.free("File/a", ())


async def test_a_revision_pass_waits_for_drift_passes_and_holds_new_ones_back() -> None:
    claims = Claims(lambda: None)
    drift = claims.take({"File/a"})
    claims.drift_started()
    desired = DesiredState(revision="r2", resources={}, dependencies={})
    entered = asyncio.Event()

    async def revision() -> None:
        async with claims.revision():
            entered.set()
            claim = claims.converging(desired, {"File/b"})
            assert claims.desired is desired and not claims.holding
            claims.end(claim)
        assert claims.desired is None

    task = asyncio.create_task(revision())
    await asyncio.sleep(0.01)
    assert claims.holding and not entered.is_set(), "waits for the drift pass in flight"
    claims.drift_ended(drift)
    await asyncio.wait_for(task, 1)
    assert not claims.holding and claims.free("File/a", ()) and claims.free("File/b", ())
