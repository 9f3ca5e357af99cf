"""The resource state machine: states, events, the transition table and a pure
step function.

The table below is the only place transitions are defined. The engine asks
`step` for the next state after every action; docs/state-machine.md is generated
from the table by `mermaid()` (tests fail when the two differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    PENDING = "Pending"
    BLOCKED = "Blocked"
    DETECTING = "Detecting"
    PLANNING = "Planning"
    APPLYING = "Applying"
    VERIFYING = "Verifying"
    IN_SYNC = "InSync"
    DRIFTED = "Drifted"
    FAILED = "Failed"
    PRUNING = "Pruning"
    SUSPENDED = "Suspended"
    GONE = "Gone"


class Event(StrEnum):
    START = "start"  # first reconcile of a new resource, dependencies in sync
    DEPENDENCY_NOT_READY = "dependency-not-ready"
    DEPENDENCY_READY = "dependency-ready"
    OBSERVED = "observed"
    PLAN_EMPTY = "plan-empty"
    PLAN_CHANGED = "plan-changed"  # plan not empty, spec new or changed
    DRIFT = "drift"  # plan not empty on a drift check
    HEAL = "heal"
    APPLIED = "applied"
    VERIFIED = "verified"
    NOT_CONVERGED = "not-converged"
    RESYNC = "resync"
    WATCH = "watch"
    SPEC_CHANGED = "spec-changed"
    ERROR = "error"
    RETRY = "retry"  # backoff elapsed
    REMOVE = "remove"  # removed from the desired state
    PRUNED = "pruned"  # deleted, or released when adopted
    SUSPEND = "suspend"
    RESUME = "resume"
    RESTART = "restart"  # found in an active state at start-up: resume from Detecting
    DRIFT_IGNORED = "drift-ignored"  # policy drift: ignore; a drift found earlier is let be


ACTIVE = frozenset(
    {State.DETECTING, State.PLANNING, State.APPLYING, State.VERIFYING, State.PRUNING}
)
"""States in which an action is under way; a crash leaves a resource in one."""

ALL = frozenset(State)


@dataclass(frozen=True, slots=True)
class Row:
    sources: frozenset[State]
    event: Event
    target: State


def _row(sources: State | frozenset[State], event: Event, target: State) -> Row:
    return Row(sources if isinstance(sources, frozenset) else frozenset({sources}), event, target)


S = State
E = Event

TABLE: tuple[Row, ...] = (
    _row(S.PENDING, E.START, S.DETECTING),
    _row(frozenset({S.PENDING, S.DETECTING, S.BLOCKED}), E.DEPENDENCY_NOT_READY, S.BLOCKED),
    _row(S.BLOCKED, E.DEPENDENCY_READY, S.DETECTING),
    _row(S.DETECTING, E.OBSERVED, S.PLANNING),
    _row(S.PLANNING, E.PLAN_EMPTY, S.IN_SYNC),
    _row(S.PLANNING, E.PLAN_CHANGED, S.APPLYING),
    _row(S.PLANNING, E.DRIFT, S.DRIFTED),
    _row(S.DRIFTED, E.HEAL, S.APPLYING),
    _row(S.DRIFTED, E.DRIFT_IGNORED, S.IN_SYNC),
    _row(S.APPLYING, E.APPLIED, S.VERIFYING),
    _row(S.VERIFYING, E.VERIFIED, S.IN_SYNC),
    _row(S.VERIFYING, E.NOT_CONVERGED, S.FAILED),
    _row(frozenset({S.IN_SYNC, S.DRIFTED}), E.RESYNC, S.DETECTING),
    _row(frozenset({S.IN_SYNC, S.DRIFTED}), E.WATCH, S.DETECTING),
    _row(frozenset({S.IN_SYNC, S.DRIFTED, S.FAILED, S.BLOCKED}), E.SPEC_CHANGED, S.DETECTING),
    _row(ACTIVE, E.ERROR, S.FAILED),
    _row(S.FAILED, E.RETRY, S.DETECTING),
    _row(ALL - {S.GONE}, E.REMOVE, S.PRUNING),
    _row(S.PRUNING, E.PRUNED, S.GONE),
    _row(ALL - {S.GONE, S.SUSPENDED}, E.SUSPEND, S.SUSPENDED),
    _row(S.SUSPENDED, E.RESUME, S.DETECTING),
    _row(ACTIVE, E.RESTART, S.DETECTING),
)

_TRANSITIONS: dict[tuple[State, Event], State] = {}
for _r in TABLE:
    for _source in _r.sources:
        if (_source, _r.event) in _TRANSITIONS:
            raise AssertionError(f"two rows for ({_source}, {_r.event})")
        _TRANSITIONS[(_source, _r.event)] = _r.target


class IllegalTransition(Exception):
    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"no transition from {state} on {event}")
        self.state = state
        self.event = event


def step(state: State, event: Event) -> State:
    """The state after `event` in `state`; raises IllegalTransition."""
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def allowed(state: State, event: Event) -> bool:
    return (state, event) in _TRANSITIONS


def mermaid() -> str:
    """A Mermaid state diagram of TABLE, one edge per (source, event, target)."""
    lines = ["stateDiagram-v2", f"    [*] --> {State.PENDING}"]
    for row in TABLE:
        for source in sorted(row.sources):
            lines.append(f"    {source} --> {row.target}: {row.event}")
    lines.append(f"    {State.GONE} --> [*]")
    return "\n".join(lines) + "\n"


def document() -> str:
    """The text of docs/state-machine.md, generated from TABLE."""

    def sources(row: Row) -> str:
        if len(row.sources) < 6:
            return ", ".join(sorted(row.sources))
        return "any but " + ", ".join(sorted(ALL - row.sources))

    rows = "\n".join(f"| {sources(r)} | {r.event} | {r.target} |" for r in TABLE)
    return (
        "# The resource state machine\n\n"
        "Generated from `reconciler/fsm.py` by `python -m reconciler.fsm > "
        "docs/state-machine.md`; a test fails when this page and the table differ.\n\n"
        f"Active states (an action is under way): {', '.join(sorted(ACTIVE))}.\n\n"
        "| from | event | to |\n|---|---|---|\n"
        f"{rows}\n\n"
        "```mermaid\n"
        f"{mermaid()}"
        "```\n"
    )


if __name__ == "__main__":
    print(document(), end="")
