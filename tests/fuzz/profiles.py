"""Settings profiles of the fuzz tests, chosen by RECONCILER_FUZZ_PROFILE:

- `ci` (the default): at least 1,000 generated manifests in a run, about two
  minutes on two cores;
- `full`: ten times as many examples (scripts/fuzz.sh).

No example database is kept (`database=None`): a failure prints the seed and
the example to reproduce it (`@reproduce_failure` blob), and nothing is written
into the repository.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, Phase, settings

_COMMON: dict[str, Any] = {
    # no explain phase: after a first failure it traces every later example
    # (sys.settrace), which made a loader failure look like a 300 s hang
    "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", **_COMMON)
settings.register_profile("full", **_COMMON)

PROFILE = os.environ.get("RECONCILER_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "full"):
    raise RuntimeError(f"RECONCILER_FUZZ_PROFILE: expected ci or full, found {PROFILE!r}")
SCALE = 10 if PROFILE == "full" else 1
"""Examples of a test in the `full` profile: ten times its `ci` count."""


def examples(ci: int, *, deadline: float) -> settings:
    """The profile's settings with `ci` examples (times SCALE), each given at most
    `deadline` seconds (a hang fails the example rather than the run's timeout)."""
    return settings(
        settings.get_profile(PROFILE),
        max_examples=ci * SCALE,
        deadline=timedelta(seconds=deadline),
    )
