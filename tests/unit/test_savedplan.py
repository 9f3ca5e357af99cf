"""reconciler.savedplan as data: observation digests, the file's round trip and
its authentication, and which differences between a saved plan and a new
preview refuse it (inputs and expected messages side by side)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from reconciler import savedplan
from reconciler.engine import Planned
from reconciler.model import (
    NO_CHANGES,
    Action,
    Change,
    DesiredState,
    Location,
    Plan,
    Policy,
    Resource,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


class _Spec(BaseModel):
    path: str


def _desired(revision: str = "abc", **hashes: str) -> DesiredState:
    resources = {
        f"File/{name}": Resource(
            "File", name, _Spec(path=f"/{name}"), Policy(), spec_hash, Location("a.yaml", 1)
        )
        for name, spec_hash in hashes.items()
    }
    return DesiredState(revision, resources, dict.fromkeys(resources, ()))


def _line(name: str, action: str, observed: Any) -> Planned:
    plan = {
        "none": NO_CHANGES,
        "create": Plan(Action.CREATE, (Change("/content", None, "x"),)),
        "update": Plan(Action.UPDATE, (Change("/content", "y", "x"),)),
    }.get(action)
    return Planned(f"File/{name}", "File", action, f"/{name}", plan, observed=observed)


OPTIONS = savedplan.Options(("/srv",), False, ("/run/secrets",), ("RECONCILER_SECRET_*",))


def _saved(planned: list[Planned], desired: DesiredState) -> savedplan.SavedPlan:
    return savedplan.build(
        planned, desired, config=Path("/c"), state_dir=Path("/s"), options=OPTIONS, key=KEY
    )


def test_observation_digests_are_keyed_and_canonical() -> None:
    a = {"type": "file", "content": "x", "mode": "0644"}
    b = {"mode": "0644", "content": "x", "type": "file"}
    digest = savedplan.observation_digest(KEY, a)
    assert digest.startswith("hmac-sha256:")
    assert digest == savedplan.observation_digest(KEY, b)
    assert digest != savedplan.observation_digest(OTHER_KEY, a)
    assert digest != savedplan.observation_digest(KEY, {**a, "content": "y"})
    assert savedplan.observation_digest(KEY, None) != savedplan.observation_digest(KEY, {})
    odd = {"b": b"\x00", "s": {3, 1}, "n": math.nan, "t": (1, 2)}
    assert savedplan.observation_digest(KEY, odd) == savedplan.observation_digest(KEY, dict(odd))


def test_a_saved_plan_round_trips_and_any_edit_is_refused(tmp_path: Path) -> None:
    desired = _desired(f="h1", g="h2")
    saved = _saved([_line("f", "create", None), _line("g", "none", {"c": 1})], desired)
    path = tmp_path / "plan"
    savedplan.write(path, saved, KEY)
    assert savedplan.is_saved_plan(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert savedplan.read(path).verify(KEY) == saved
    assert saved.targets == {"File/f"}

    with pytest.raises(savedplan.PlanFileError, match="another state directory"):
        savedplan.read(path).verify(OTHER_KEY)
    document = json.loads(path.read_text())
    for edit in (
        lambda d: d["resources"][1].update(action="update"),
        lambda d: d["options"]["roots"].append("/"),
        lambda d: d.update(revision="def"),
        lambda d: d.update(mac=None),
    ):
        changed = json.loads(json.dumps(document))
        edit(changed)
        path.write_text(json.dumps(changed))
        with pytest.raises(savedplan.PlanFileError, match="changed after it was written"):
            savedplan.read(path).verify(KEY)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"format": "reconciler-plan", "version": 2}',
            "of version 2; this reconciler reads version 1",
        ),
        ('{"format": "reconciler-plan", "version": 1', "invalid JSON"),
        ('{"format": "something-else"}', "not a saved plan"),
    ],
)
def test_what_is_not_a_readable_plan(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "plan"
    path.write_text(text)
    with pytest.raises(savedplan.PlanFileError, match=message):
        savedplan.read(path)


def test_a_manifest_is_not_a_saved_plan(tmp_path: Path) -> None:
    manifest = tmp_path / "a.yaml"
    manifest.write_text("apiVersion: reconciler/v1\nkind: File\n")
    assert not savedplan.is_saved_plan(manifest)
    assert not savedplan.is_saved_plan(tmp_path)


def test_a_plan_with_an_error_is_not_built() -> None:
    error = Planned("File/f", "File", "error", "/f", error="boom")
    with pytest.raises(ValueError, match="File/f could not be planned"):
        _saved([error], _desired(f="h1"))


SAVED = ([("f", "create", None), ("g", "none", {"c": 1})], {"f": "h1", "g": "h2"})

CASES: list[tuple[str, list[tuple[str, str, Any]], dict[str, str], str, list[str]]] = [
    ("the same", *SAVED, "abc", []),
    (
        "a hand edit of an unchanged object",
        [("f", "create", None), ("g", "none", {"c": 2})],
        SAVED[1],
        "abc",
        ["File/g: observed state changed since the plan"],
    ),
    (
        "an object made by hand",
        [("f", "update", {"c": 0}), ("g", "none", {"c": 1})],
        SAVED[1],
        "abc",
        ["File/f: observed state changed since the plan"],
    ),
    (
        "a new revision with a new spec",
        SAVED[0],
        {"f": "h9", "g": "h2"},
        "def",
        ["revision changed: planned abc, now def", "File/f: desired spec changed since the plan"],
    ),
    (
        "a resource added",
        [*SAVED[0], ("h", "create", None)],
        {**SAVED[1], "h": "h3"},
        "def",
        ["revision changed: planned abc, now def", "File/h: not in the plan, now create"],
    ),
    (
        "a resource gone",
        SAVED[0][:1],
        {"f": "h1"},
        "def",
        ["revision changed: planned abc, now def", "File/g: planned to none, now not in the plan"],
    ),
]


@pytest.mark.parametrize(
    "now, hashes, revision, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_what_refuses_a_saved_plan(
    now: list[tuple[str, str, Any]], hashes: dict[str, str], revision: str, expected: list[str]
) -> None:
    lines, saved_hashes = SAVED
    saved = _saved([_line(*line) for line in lines], _desired(**saved_hashes))
    planned = [_line(*line) for line in now]
    assert savedplan.refusals(saved, planned, _desired(revision, **hashes), KEY) == expected


def test_an_error_now_refuses_the_plan() -> None:
    lines, hashes = SAVED
    saved = _saved([_line(*line) for line in lines], _desired(**hashes))
    now = [_line("f", "create", None), Planned("File/g", "File", "error", "/g", error="gone")]
    assert savedplan.refusals(saved, now, _desired(**hashes), KEY) == [
        "File/g: cannot be planned now: gone"
    ]


def test_a_plan_file_in_the_tree_is_told(tmp_path: Path) -> None:
    tree = tmp_path / "cfg"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.yaml").write_text("")
    assert savedplan.in_tree(tree / "tfplan", tree)
    assert savedplan.in_tree(tree / "sub/tfplan", tree)
    assert not savedplan.in_tree(tree / ".tfplan", tree)
    assert not savedplan.in_tree(tree / ".plans/tfplan", tree)
    assert not savedplan.in_tree(tmp_path / "tfplan", tree)
    assert not savedplan.in_tree(tree / "tfplan", tree / "a.yaml")
