"""The state machine as data: the expected transitions are written out here, from
DESIGN.md, and compared with `fsm.TABLE`; every other (state, event) pair must raise."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from reconciler import fsm
from reconciler.fsm import Event, State

S = State
E = Event

DOC = Path(__file__).resolve().parents[2] / "docs" / "state-machine.md"

_ACTIVE = (S.DETECTING, S.PLANNING, S.APPLYING, S.VERIFYING, S.PRUNING)
_ALL_BUT_GONE = tuple(s for s in State if s is not S.GONE)

EXPECTED: dict[tuple[State, Event], State] = {
    (S.PENDING, E.START): S.DETECTING,
    (S.PENDING, E.DEPENDENCY_NOT_READY): S.BLOCKED,
    (S.DETECTING, E.DEPENDENCY_NOT_READY): S.BLOCKED,
    (S.BLOCKED, E.DEPENDENCY_NOT_READY): S.BLOCKED,
    (S.BLOCKED, E.DEPENDENCY_READY): S.DETECTING,
    (S.DETECTING, E.OBSERVED): S.PLANNING,
    (S.PLANNING, E.PLAN_EMPTY): S.IN_SYNC,
    (S.PLANNING, E.PLAN_CHANGED): S.APPLYING,
    (S.PLANNING, E.DRIFT): S.DRIFTED,
    (S.DRIFTED, E.HEAL): S.APPLYING,
    (S.DRIFTED, E.DRIFT_IGNORED): S.IN_SYNC,
    (S.APPLYING, E.APPLIED): S.VERIFYING,
    (S.VERIFYING, E.VERIFIED): S.IN_SYNC,
    (S.VERIFYING, E.NOT_CONVERGED): S.FAILED,
    (S.IN_SYNC, E.RESYNC): S.DETECTING,
    (S.DRIFTED, E.RESYNC): S.DETECTING,
    (S.IN_SYNC, E.WATCH): S.DETECTING,
    (S.DRIFTED, E.WATCH): S.DETECTING,
    (S.IN_SYNC, E.SPEC_CHANGED): S.DETECTING,
    (S.DRIFTED, E.SPEC_CHANGED): S.DETECTING,
    (S.FAILED, E.SPEC_CHANGED): S.DETECTING,
    (S.BLOCKED, E.SPEC_CHANGED): S.DETECTING,
    **{(s, E.ERROR): S.FAILED for s in _ACTIVE},
    (S.FAILED, E.RETRY): S.DETECTING,
    **{(s, E.REMOVE): S.PRUNING for s in _ALL_BUT_GONE},
    (S.PRUNING, E.PRUNED): S.GONE,
    **{(s, E.SUSPEND): S.SUSPENDED for s in _ALL_BUT_GONE if s is not S.SUSPENDED},
    (S.SUSPENDED, E.RESUME): S.DETECTING,
    **{(s, E.RESTART): S.DETECTING for s in _ACTIVE},
}

ILLEGAL = [pair for pair in itertools.product(State, Event) if pair not in EXPECTED]


def _table_pairs() -> dict[tuple[State, Event], State]:
    return {(source, row.event): row.target for row in fsm.TABLE for source in row.sources}


def _rows() -> list[tuple[State, Event, State]]:
    return [(s, row.event, row.target) for row in fsm.TABLE for s in sorted(row.sources)]


def test_table_is_the_designed_machine() -> None:
    table = _table_pairs()
    missing = {k: v for k, v in EXPECTED.items() if table.get(k) != v}
    extra = {k: v for k, v in table.items() if k not in EXPECTED}
    assert not missing, f"transitions of DESIGN.md absent from fsm.TABLE: {missing}"
    assert not extra, f"transitions in fsm.TABLE not in DESIGN.md: {extra}"


@pytest.mark.parametrize(
    ("source", "event", "target"), _rows(), ids=lambda v: str(v) if v is not None else ""
)
def test_every_row_steps_to_its_target(source: State, event: Event, target: State) -> None:
    assert fsm.allowed(source, event)
    assert fsm.step(source, event) is target


@pytest.mark.parametrize(("state", "event"), sorted(EXPECTED), ids=str)
def test_expected_transition(state: State, event: Event) -> None:
    assert fsm.step(state, event) is EXPECTED[(state, event)]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=str)
def test_illegal_transition_raises(state: State, event: Event) -> None:
    assert not fsm.allowed(state, event)
    with pytest.raises(fsm.IllegalTransition) as info:
        fsm.step(state, event)
    assert info.value.state is state
    assert info.value.event is event
    assert str(state) in str(info.value) and str(event) in str(info.value)


def test_illegal_pairs_cover_the_rest_of_the_product() -> None:
    assert len(ILLEGAL) + len(EXPECTED) == len(State) * len(Event)
    assert ILLEGAL, "the machine cannot accept every event in every state"


def test_gone_is_final() -> None:
    assert all((S.GONE, e) in ILLEGAL for e in Event)


def test_active_states() -> None:
    assert frozenset(_ACTIVE) == fsm.ACTIVE


def test_state_machine_doc_is_generated_from_table() -> None:
    text = DOC.read_text()
    assert text == fsm.document(), (
        "docs/state-machine.md differs from fsm.document(); regenerate it with "
        "`python -m reconciler.fsm > docs/state-machine.md`"
    )


_EDGE = re.compile(r"^    (\w+) --> (\w+): ([\w-]+)$")


def test_mermaid_has_an_edge_for_every_row() -> None:
    text = fsm.mermaid()
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert f"    [*] --> {S.PENDING}: {E.NEW}" in lines
    assert f"    {S.GONE} --> [*]" in lines
    edges = [m.groups() for line in lines if (m := _EDGE.match(line))]
    expected = [(str(s), str(t), str(e)) for s, e, t in _rows()]
    assert sorted(edges) == sorted(expected)
    assert len(edges) == len(EXPECTED)


# --- the start and action tables ------------------------------------------------


def test_every_state_a_resource_can_be_left_in_has_its_start() -> None:
    assert set(fsm.STARTS) == set(State) - {S.GONE}


@pytest.mark.parametrize(("state", "start"), fsm.STARTS.items(), ids=lambda v: str(v)[:12])
def test_start_events_are_transitions_of_their_state(state: State, start: fsm.Start) -> None:
    events = [start.event] if start.event is not None else sorted(fsm.CHECKS)
    events += [e for e in (start.changed, start.suspend) if e is not None]
    for event in events:
        assert fsm.allowed(state, event), (state, event)
    if start.unchecked is not None:  # settled without a pass: no action follows
        assert fsm.step(state, start.unchecked) not in fsm.ACTIONS
    if start.gated:
        assert fsm.allowed(state, E.DEPENDENCY_NOT_READY)
    else:  # started, then blocked from where the start event led
        for event in events:
            target = fsm.step(state, event)
            assert target is S.SUSPENDED or fsm.allowed(target, E.DEPENDENCY_NOT_READY)


def test_starts_are_the_designed_ones() -> None:
    starts = {s: (st.event, st.changed, st.gated, st.suspend) for s, st in fsm.STARTS.items()}
    assert starts[S.PENDING] == (E.START, None, True, E.SUSPEND)
    assert starts[S.BLOCKED] == (E.DEPENDENCY_READY, None, True, E.SUSPEND)
    assert starts[S.IN_SYNC] == starts[S.DRIFTED] == (None, E.SPEC_CHANGED, False, E.SUSPEND)
    assert starts[S.FAILED] == (E.RETRY, E.SPEC_CHANGED, False, E.SUSPEND)
    assert fsm.STARTS[S.FAILED].since is fsm.Since.ATTEMPTED
    assert starts[S.SUSPENDED] == (E.RESUME, None, False, None)
    assert fsm.STARTS[S.DRIFTED].unchecked is E.DRIFT_IGNORED
    assert all(st.unchecked is None for s, st in fsm.STARTS.items() if s is not S.DRIFTED)
    assert frozenset({S.IN_SYNC, S.DRIFTED}) == fsm.CHECKED
    for state in _ACTIVE:
        assert starts[state] == (E.RESTART, None, False, E.SUSPEND)


@pytest.mark.parametrize("state", _ALL_BUT_GONE, ids=str)
def test_pruning_starts_from_every_state(state: State) -> None:
    assert fsm.PRUNE is E.REMOVE
    assert fsm.step(state, fsm.PRUNE) is S.PRUNING
    assert S.PRUNING in fsm.ACTIONS
    assert fsm.step(S.PRUNING, E.PRUNED) is S.GONE


def test_every_active_state_has_an_action() -> None:
    assert set(fsm.ACTIONS) >= fsm.ACTIVE
    rests = {s for s in State if s not in fsm.ACTIONS}
    assert rests == {S.PENDING, S.BLOCKED, S.IN_SYNC, S.FAILED, S.SUSPENDED, S.GONE}


@pytest.mark.parametrize(("state", "action"), fsm.ACTIONS.items(), ids=lambda v: str(v)[:12])
def test_action_outcomes_are_transitions_of_their_state(state: State, action: fsm.Action) -> None:
    assert action.outcomes
    for event in action.outcomes:
        assert fsm.allowed(state, event), (state, event)
    assert action.quiet is None or action.quiet in action.outcomes
    assert action.rests == (state is S.DRIFTED)
    assert action.retries == (state is not S.PRUNING)


@pytest.mark.parametrize("trigger", sorted(fsm.CHECKS), ids=str)
def test_quiet_check_replays_table_steps(trigger: Event) -> None:
    path = fsm.quiet_path(S.IN_SYNC, trigger)
    assert path == (
        (S.IN_SYNC, trigger, S.DETECTING),
        (S.DETECTING, E.OBSERVED, S.PLANNING),
        (S.PLANNING, E.PLAN_EMPTY, S.IN_SYNC),
    )
    for source, event, target in path:
        assert fsm.step(source, event) is target
    assert fsm.quiet_check(S.IN_SYNC, trigger)
    # a drifted resource that is clean again leaves Drifted: that is recorded
    assert fsm.quiet_path(S.DRIFTED, trigger)[-1][2] is S.IN_SYNC
    assert not fsm.quiet_check(S.DRIFTED, trigger)
    assert not any(fsm.quiet_check(s, trigger) for s in State if s is not S.IN_SYNC)
