"""The engine: drives every resource of a desired state through the state
machine, in dependency order, concurrently, and prunes what left the desired state.

The package, one concern a module:

- `records`: what the engine hands out (Result, Report, Planned, the Outcome and
  PlanAction enums), the Telemetry protocol, MassPruneRefused;
- `batcher`: the generic batcher behind observe_many / apply_many;
- `queries`: read-only planning queries (preview, prune refusal, changes);
- `core`: the Engine object (bind, converge, the queries);
- `passes`: the pass driver (start table, action loop, fast path, pruning);
- `actions`: the actions of the working states.

Everything the rest of reconciler uses is imported from here.
"""

from __future__ import annotations

from reconciler.backoff import backoff
from reconciler.engine.batcher import MAX_APPLY_BATCH, MAX_BATCH
from reconciler.engine.core import Engine
from reconciler.engine.passes import SATISFIES_DEPENDENTS
from reconciler.engine.records import (
    APPLIED,
    CHANGING,
    UNSETTLED,
    MassPruneRefused,
    Outcome,
    PlanAction,
    Planned,
    Report,
    Result,
    Telemetry,
)

__all__ = [
    "APPLIED",
    "CHANGING",
    "MAX_APPLY_BATCH",
    "MAX_BATCH",
    "SATISFIES_DEPENDENTS",
    "UNSETTLED",
    "Engine",
    "MassPruneRefused",
    "Outcome",
    "PlanAction",
    "Planned",
    "Report",
    "Result",
    "Telemetry",
    "backoff",
]
