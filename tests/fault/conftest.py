"""One calibrated workspace for every trial of a session: the base workload applied
once and saved, and the measured duration of a clean run of each phase."""

from __future__ import annotations

import os

import pytest

from tests.fault.trials import DEFAULT_SEED, Workspace

SEED_ENV = "RECONCILER_FAULT_SEED"


@pytest.fixture(scope="session")
def fault_seed() -> int:
    """The run's seed: RECONCILER_FAULT_SEED, or a fixed default so CI is repeatable."""
    return int(os.environ.get(SEED_ENV, DEFAULT_SEED))


@pytest.fixture(scope="session")
def fault_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    workspace = Workspace(tmp_path_factory.mktemp("fault"))
    workspace.calibrate()
    return workspace
