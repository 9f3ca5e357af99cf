"""The provider conformance kit, a pytest plugin installed with reconciler.

A provider author describes the provider in a `Case` (how to make a spec and
change it, how to cause drift out of band, how to look at the real object) and
subclasses `ProviderConformance` with `cases = (case,)`; the scenarios then run
on the real target: create from nothing, an idempotent second pass, out-of-band
drift detected and healed, update, delete and prune from the stored spec,
observe and plan without side effects, invalid specs rejected by the real loader
with their file, line and field, secrets never shown, the batched calls the
engine makes, and watch. A kind that differs from the contract by its nature
says so in its case (`absent_is_none`, `update_action`, `updates_replace`, and
`skip`: a scenario that does not apply, with the reason its skip reports).
docs/writing-providers.md walks through an example.
"""

from __future__ import annotations

import pytest

# before the modules are imported: their asserts then explain themselves
pytest.register_assert_rewrite("reconciler.testing.kit", "reconciler.testing.scenarios")

from reconciler.testing.kit import (  # noqa: E402
    Case,
    Drift,
    Harness,
    Invalid,
    SpecData,
    fields,
    tree_snapshot,
)
from reconciler.testing.scenarios import ProviderConformance  # noqa: E402

__all__ = [
    "Case",
    "Drift",
    "Harness",
    "Invalid",
    "ProviderConformance",
    "SpecData",
    "fields",
    "tree_snapshot",
]
