"""The resource state machine: states, events, the transition table and a pure
step function.

Three tables hold the behaviour, and the engine only looks them up: TABLE, the
transitions; STARTS, the event that starts a pass for a resource in each state it
can be left in (and PRUNE, the one for a resource removed from the desired state);
ACTIONS, what runs in each working state, the outcomes it may end with and the
quiet one that the fast path replays (`quiet_path`). The engine asks `step` for
the next state after every action; docs/state-machine.md is generated from the
tables by `document()` (tests fail when the two differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache


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
    NEW = "new"  # a resource seen for the first time: recorded as it enters INITIAL
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

INITIAL = State.PENDING
"""The state a resource enters when first seen (event `new`, from no state)."""

CHECKS = frozenset({Event.RESYNC, Event.WATCH})
"""The events that start a drift check of an unchanged resource: a pass's trigger."""


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


class Since(StrEnum):
    """What a new spec is compared with when a pass starts."""

    CONVERGED = "spec converged"  # its hash
    ATTEMPTED = "spec acted on"  # converged or not: a failure's


@dataclass(frozen=True, slots=True)
class Start:
    """How a pass starts for a resource left in a state."""

    event: Event | None
    """The event that starts the pass; None: the pass's trigger (a drift check)."""
    changed: Event | None = None
    """The event instead when the spec is new since `since`; None: `event` anyway."""
    since: Since = Since.CONVERGED
    gated: bool = False
    """Dependencies gate the start event itself: a resource whose dependencies are
    not in sync steps dependency-not-ready instead. Otherwise it starts, then blocks."""
    suspend: Event | None = Event.SUSPEND
    """The event when the policy suspends the resource; None: it rests as it is."""
    reason: str | None = None
    """Recorded with the start event."""
    unchecked: Event | None = None
    """The event when `policy.drift: ignore` leaves a resource whose spec converged
    unchecked (not observed); None: it rests as it is."""


STARTS: dict[State, Start] = {
    S.PENDING: Start(E.START, gated=True),
    S.BLOCKED: Start(E.DEPENDENCY_READY, gated=True),
    S.IN_SYNC: Start(None, changed=E.SPEC_CHANGED),
    S.DRIFTED: Start(None, changed=E.SPEC_CHANGED, unchecked=E.DRIFT_IGNORED),
    S.FAILED: Start(E.RETRY, changed=E.SPEC_CHANGED, since=Since.ATTEMPTED),
    S.SUSPENDED: Start(E.RESUME, suspend=None),
    **{s: Start(E.RESTART, reason="resumed after a stop") for s in sorted(ACTIVE)},
}
"""The event that starts a pass, for every state a resource can be left in (all
but Gone). Active states are found only after a stop: they resume from Detecting."""

CHECKED = frozenset(state for state, start in STARTS.items() if start.event is None)
"""States a pass starts with a drift check (the trigger) when the spec is unchanged."""

PRUNE = Event.REMOVE
"""The event that starts the pass of a resource removed from the desired state,
from whatever state it was left in."""


@dataclass(frozen=True, slots=True)
class Action:
    """What the engine runs in a state, and the events it may end with (besides
    error, from an active state)."""

    name: str
    outcomes: frozenset[Event]
    quiet: Event | None = None
    """The outcome when there is nothing to do; the fast path replays these."""
    phase: str | None = None
    """The reconcile latency phase the action is timed under; None: not timed."""
    rests: bool = False
    """The action may end with no event: the resource rests in this state."""
    retries: bool = True
    """A failure is scheduled for a retry with backoff (and retried within the pass
    when the engine allows); False: it waits for the next pass, unscheduled."""


ACTIONS: dict[State, Action] = {
    S.DETECTING: Action("observe", frozenset({E.OBSERVED}), E.OBSERVED, "detect"),
    S.PLANNING: Action(
        "plan", frozenset({E.PLAN_EMPTY, E.PLAN_CHANGED, E.DRIFT}), E.PLAN_EMPTY, "plan"
    ),
    S.DRIFTED: Action("heal or report", frozenset({E.HEAL}), rests=True),
    S.APPLYING: Action("apply", frozenset({E.APPLIED}), phase="apply"),
    S.VERIFYING: Action("verify", frozenset({E.VERIFIED, E.NOT_CONVERGED}), phase="verify"),
    S.PRUNING: Action("delete or release", frozenset({E.PRUNED}), phase="prune", retries=False),
}
"""The action of every working state; a state without one is where a pass rests."""


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


@cache
def quiet_path(state: State, event: Event) -> tuple[tuple[State, Event, State], ...]:
    """The steps from `state` on `event` when every action finds nothing to do
    (each ends with its quiet outcome), up to the state the pass rests in. The
    fast path replays these for a drift check that finds nothing."""
    steps = [(state, event, step(state, event))]
    while (action := ACTIONS.get(steps[-1][2])) is not None and action.quiet is not None:
        source = steps[-1][2]
        steps.append((source, action.quiet, step(source, action.quiet)))
    return tuple(steps)


def quiet_check(state: State, trigger: Event) -> bool:
    """Whether a drift check of a resource left in `state` comes back to it when
    nothing differs (InSync): such a check is a no-op, recorded nowhere."""
    if state not in CHECKED or not allowed(state, trigger):
        return False
    return quiet_path(state, trigger)[-1][2] is state


def mermaid() -> str:
    """A Mermaid state diagram of TABLE, one edge per (source, event, target)."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL}: {Event.NEW}"]
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

    def start(state: State, entry: Start) -> str:
        event = (
            str(entry.event)
            if entry.event is not None
            else "the trigger (" + (" or ".join(sorted(CHECKS)) + ")")
        )
        changed = f"{entry.changed} (against the last {entry.since})" if entry.changed else ""
        gated = "dependency-not-ready instead" if entry.gated else "start, then block"
        suspend = str(entry.suspend) if entry.suspend is not None else "rests"
        unchecked = str(entry.unchecked) if entry.unchecked is not None else ""
        return f"| {state} | {event} | {changed} | {gated} | {suspend} | {unchecked} |"

    starts = "\n".join(start(s, e) for s, e in STARTS.items())

    def action(state: State, entry: Action) -> str:
        outcomes = ", ".join(sorted(entry.outcomes)) + (", or none: rests" if entry.rests else "")
        quiet = str(entry.quiet) if entry.quiet is not None else ""
        retry = "in the pass" if entry.retries else "next pass"
        return f"| {state} | {entry.name} | {outcomes} | {quiet} | {entry.phase or ''} | {retry} |"

    actions = "\n".join(action(s, e) for s, e in ACTIONS.items())
    quiet = " -> ".join(
        [str(State.IN_SYNC)]
        + [f"{e} -> {t}" for _, e, t in quiet_path(State.IN_SYNC, Event.RESYNC)]
    )
    return (
        "# The resource state machine\n\n"
        "Generated from `reconciler/fsm.py` by `python -m reconciler.fsm > "
        "docs/state-machine.md`; a test fails when this page and the table differ.\n\n"
        f"Active states (an action is under way): {', '.join(sorted(ACTIVE))}.\n\n"
        f"A resource seen for the first time enters {INITIAL} on `{Event.NEW}`.\n\n"
        "| from | event | to |\n|---|---|---|\n"
        f"{rows}\n\n"
        "## How a pass starts\n\n"
        "The event that starts a pass for a resource left in each state (`STARTS`). "
        f"A resource removed from the desired state starts on `{PRUNE}` from any state.\n\n"
        "| state | event | when the spec is new | dependencies not in sync | policy suspend "
        "| drift: ignore, not checked |\n"
        "|---|---|---|---|---|---|\n"
        f"{starts}\n\n"
        "## Actions\n\n"
        "What runs in each working state (`ACTIONS`); an error from an active state "
        "steps `error`. A drift check that finds nothing replays the quiet outcomes "
        f"and is recorded nowhere: {quiet}.\n\n"
        "| state | action | outcomes | quiet | phase | a failure is retried |\n"
        "|---|---|---|---|---|---|\n"
        f"{actions}\n\n"
        "## Diagram\n\n"
        "```mermaid\n"
        f"{mermaid()}"
        "```\n"
    )


if __name__ == "__main__":
    print(document(), end="")
