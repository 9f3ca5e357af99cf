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
    assert f"    [*] --> {S.PENDING}" in lines
    assert f"    {S.GONE} --> [*]" in lines
    edges = [m.groups() for line in lines if (m := _EDGE.match(line))]
    expected = [(str(s), str(t), str(e)) for s, e, t in _rows()]
    assert sorted(edges) == sorted(expected)
    assert len(edges) == len(EXPECTED)
