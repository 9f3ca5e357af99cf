"""What the engine hands out and reports through: the result of a pass for each
resource, a pass's report, a preview line, the enums naming what was done or
would be done, the telemetry protocol, and the mass-prune refusal.

Other layers (the CLI, the daemon, diff and saved plans) compare actions with the
members of `Outcome` and `PlanAction`; both are `StrEnum`s, so text and JSON
output read exactly as the plain strings did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from reconciler.fsm import Event, State
from reconciler.model import Observed, Plan, ProviderError, ResourceId


class MassPruneRefused(Exception):
    pass


class Outcome(StrEnum):
    """What a pass did to one resource (`Result.action`)."""

    CREATED = "created"
    UPDATED = "updated"
    HEALED = "healed"
    UNCHANGED = "unchanged"
    DRIFTED = "drifted"
    DELETED = "deleted"
    RELEASED = "released"
    FAILED = "failed"
    BLOCKED = "blocked"
    SUSPENDED = "suspended"


APPLIED = frozenset({Outcome.CREATED, Outcome.UPDATED, Outcome.HEALED})
"""Outcomes of a pass that changed the object."""
UNSETTLED = frozenset({Outcome.FAILED, Outcome.BLOCKED})
"""Outcomes that leave a resource short of its desired state."""


class PlanAction(StrEnum):
    """What apply would do to one resource (`Planned.action`)."""

    CREATE = "create"
    UPDATE = "update"
    DRIFT = "drift"  # drifted, healed by apply
    DRIFT_WARN = "drift-warn"  # drifted, policy warn: reported, not healed
    DELETE = "delete"
    RELEASE = "release"
    NONE = "none"
    SUSPENDED = "suspended"
    ERROR = "error"


CHANGING = frozenset(
    {PlanAction.CREATE, PlanAction.UPDATE, PlanAction.DRIFT, PlanAction.DELETE, PlanAction.RELEASE}
)
"""Plan actions that change something when applied."""


class Telemetry(Protocol):
    """Where the engine reports what it does, for metrics. Called on the event
    loop; implementations must be quick and must not block."""

    def transitions(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        """Transitions of one pass: (kind, from state or "none", to state) -> count."""

    def phase(self, kind: str, phase: str, seconds: float, n: int = 1) -> None:
        """`n` resources spent `seconds` in a phase: detect, plan, apply, verify, prune."""

    def applied(self, kind: str, ok: bool) -> None: ...

    def drifted(self, kind: str) -> None: ...

    def pruned(self, kind: str) -> None: ...


class NoTelemetry:
    def transitions(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        pass

    def phase(self, kind: str, phase: str, seconds: float, n: int = 1) -> None:
        pass

    def applied(self, kind: str, ok: bool) -> None:
        pass

    def drifted(self, kind: str) -> None:
        pass

    def pruned(self, kind: str) -> None:
        pass


def error_text(exc: BaseException) -> str:
    if isinstance(exc, ProviderError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class Step:
    """How an action ended: the event to step on, and what to record with it."""

    event: Event
    reason: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """What a pass did to one resource."""

    id: ResourceId
    state: State
    action: Outcome
    error: str | None = None
    plan: Plan | None = None
    retry_in: float | None = None
    """When to look again (backoff of a failure, or of a repeated heal); None: on
    the next change or resync."""
    instance: str = ""
    """The bundle instance that made the resource (for a prune: as recorded)."""


@dataclass(frozen=True, slots=True, repr=False)
class Report:
    revision: str
    results: dict[ResourceId, Result]
    seconds: float

    def __repr__(self) -> str:  # asyncio reprs a finished task's result: keep it short
        return f"<Report {self.revision}: {len(self.results)} resources, {self.seconds:.3f} s>"

    def count(self, action: str) -> int:
        return sum(1 for r in self.results.values() if r.action == action)

    def by_action(self) -> dict[str, int]:
        """How many resources the pass left with each action, sorted by action."""
        counts: dict[str, int] = {}
        for result in self.results.values():
            counts[result.action] = counts.get(result.action, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        """What the pass did, counted by action: "2 created, 11 unchanged"."""
        done = ", ".join(f"{n} {action}" for action, n in self.by_action().items())
        return done or "nothing to do"

    @property
    def ok(self) -> bool:
        return not any(r.action in UNSETTLED for r in self.results.values())


@dataclass(frozen=True, slots=True)
class Planned:
    """One line of a preview: what apply would do to a resource, without doing it."""

    id: ResourceId
    kind: str
    action: PlanAction
    describe: str
    plan: Plan | None = None
    error: str | None = None
    note: str | None = None
    instance: str = ""
    """The Bundle instance that made the resource (see `Resource.instance`)."""
    observed: Observed | None = field(default=None, repr=False, compare=False)
    """What the preview observed, for a line with a `plan` (None: absent). It may
    hold a secret in clear (a file's content): never rendered; saved plans keep
    only its keyed digest."""
