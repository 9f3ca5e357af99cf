"""Crash-clean (issue 8, scope 5): seeded SIGKILLs of `reconciler apply` during the
first apply, an update, a heal and a prune of 1,000 resources, and of the daemon
while it heals; after the next apply (or the restarted daemon) the tree equals the
desired state with no stray entry of any name, the store's integrity check is
clean and its inventory matches, and plan finds nothing to do.

One test per trial, so each has its own timeout (the first of each kind also pays
for its calibration). Trial i draws everything from random.Random(seed + i); a
failure names the seed and the command that replays it (decision 0072).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault.daemon_trials import calibrate_daemon_heal, run_daemon_heal_trial
from tests.fault.trials import PHASES, Workspace, run_trial

CLI_TRIALS = 28
"""Seven per phase (trial i runs PHASES[i % 4])."""
DAEMON_TRIALS = 4
"""Daemon heal trials, numbered after the CLI ones so their seeds differ."""


@pytest.fixture(scope="session")
def daemon_heal_window(
    fault_workspace: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> float:
    return calibrate_daemon_heal(fault_workspace, tmp_path_factory.mktemp("daemons"))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "index",
    range(CLI_TRIALS),
    ids=[f"{i:02d}-{PHASES[i % len(PHASES)]}" for i in range(CLI_TRIALS)],
)
def test_sigkill_apply_then_apply_converges_cleanly(
    fault_workspace: Workspace, fault_seed: int, index: int
) -> None:
    result = run_trial(fault_workspace, index, fault_seed)
    assert result.ok, result.describe()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("index", range(CLI_TRIALS, CLI_TRIALS + DAEMON_TRIALS))
def test_sigkill_healing_daemon_then_restart_converges_cleanly(
    fault_workspace: Workspace,
    daemon_heal_window: float,
    fault_seed: int,
    index: int,
    tmp_path: Path,
) -> None:
    result = run_daemon_heal_trial(fault_workspace, index, fault_seed, daemon_heal_window, tmp_path)
    assert result.ok, result.describe()
