"""Crash-clean (issue 8, scope 5): seeded SIGKILLs of `reconciler apply` during the
first apply, an update, a heal and a prune of 1,000 resources; after the next apply
the tree equals the desired state with no stray entry of any name, the store's
integrity check is clean and its inventory matches, and plan finds nothing to do.

One test per trial, so each has its own timeout (the first one also pays for the
calibration). Trial i draws everything from random.Random(seed + i); a failure
names the seed and the command that replays it.
"""

from __future__ import annotations

import pytest

from tests.fault.trials import PHASES, Workspace, run_trial

CI_TRIALS = 32
"""Eight per phase (trial i runs PHASES[i % 4])."""


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "index", range(CI_TRIALS), ids=[f"{i:02d}-{PHASES[i % len(PHASES)]}" for i in range(CI_TRIALS)]
)
def test_sigkill_then_apply_converges_cleanly(
    fault_workspace: Workspace, fault_seed: int, index: int
) -> None:
    result = run_trial(fault_workspace, index, fault_seed)
    assert result.ok, result.describe()
