"""What a new user tripped over (issue 10, section 3), through the real CLI: an
empty manifest file is an error unless it says it is empty on purpose (a
truncated file must not prune what it declared), and a YAML error of an unclosed
quote or bracket is reported where it starts, not where the file ends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Sandbox, doc

pytestmark = pytest.mark.timeout(60)


def _two_files(sandbox: Sandbox) -> tuple[Path, Path]:
    keep, lost = sandbox.root / "keep.txt", sandbox.root / "lost.txt"
    sandbox.write("keep.yaml", doc("File", "keep", {"path": str(keep), "content": "k\n"}))
    sandbox.write("lost.yaml", doc("File", "lost", {"path": str(lost), "content": "l\n"}))
    sandbox.run("apply", check=0)
    assert keep.read_text() == "k\n" and lost.read_text() == "l\n"
    return keep, lost


@pytest.mark.parametrize(
    "text",
    ["", "\n", "# only a comment\n", "---\n", "---\n# c\n---\n...\n"],
    ids=["zero-bytes", "blank", "comment", "separator", "documents-of-nothing"],
)
def test_a_truncated_manifest_is_an_error_and_prunes_nothing(sandbox: Sandbox, text: str) -> None:
    keep, lost = _two_files(sandbox)
    (sandbox.config / "lost.yaml").write_text(text)

    result = sandbox.run("apply", check=1)

    assert "  lost.yaml: empty manifest: a truncated file would prune what it declared;" in (
        result.stderr
    ), result.stderr
    assert "'# reconciler: empty'" in result.stderr
    assert "nothing applied" in result.stderr
    assert lost.read_text() == "l\n", "a truncated file pruned what it declared"
    assert keep.read_text() == "k\n"


def test_a_file_marked_empty_declares_nothing(sandbox: Sandbox) -> None:
    keep, lost = _two_files(sandbox)
    (sandbox.config / "lost.yaml").write_text("# reconciler: empty\n# moved to keep.yaml\n---\n")

    sandbox.run("apply", check=0)

    assert not lost.exists(), "the resources of a file emptied on purpose are pruned"
    assert keep.read_text() == "k\n"
    sandbox.run("validate", check=0)


def test_the_empty_marker_on_a_file_that_declares_resources_is_an_error(sandbox: Sandbox) -> None:
    # a truncated copy of this file could be the marker alone: refusing the pair
    # means a marked file that validates was never cut short of a declaration
    text = "# reconciler: empty\n" + doc("File", "a", {"path": str(sandbox.root / "a")})
    (sandbox.config / "a.yaml").write_text(text)

    result = sandbox.run("validate", check=1)

    assert "  a.yaml:1: the file starts with '# reconciler: empty' but declares resources" in (
        result.stderr
    ), result.stderr


def _lines(count: int) -> str:
    return "".join(f"  - item {i}\n" for i in range(count))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'apiVersion: reconciler/v1\nkind: File\nmetadata: {name: "a}\nspec:\n' + _lines(35),
            "bad.yaml:3: invalid YAML: unclosed quoted scalar started at line 3, "
            "found end of file at line 40",
        ),
        (
            "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: 'a}\nspec:\n" + _lines(35),
            "bad.yaml:3: invalid YAML: unclosed quoted scalar started at line 3, "
            "found end of file at line 40",
        ),
        (
            "apiVersion: reconciler/v1\nkind: File\nmetadata:\n  labels: [a, b\n"
            "spec:\n  path: /x\n",
            "bad.yaml:4: invalid YAML: unclosed flow sequence ('[') started at line 4, "
            "did not find expected ',' or ']' at line 5",
        ),
        (
            "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: a,\n"
            "  labels: {x: y}\nspec:\n  path: /x\n",
            "bad.yaml:3: invalid YAML: unclosed flow mapping ('{') started at line 3, "
            "did not find expected ',' or '}' at line 5",
        ),
    ],
    ids=["double-quote", "single-quote", "bracket", "brace"],
)
def test_an_unclosed_construct_is_reported_where_it_starts(
    sandbox: Sandbox, text: str, expected: str
) -> None:
    (sandbox.config / "bad.yaml").write_text(text)

    result = sandbox.run("validate", check=1)

    assert f"  {expected}\n" in result.stderr, result.stderr


def test_other_yaml_errors_stay_where_the_problem_is(sandbox: Sandbox) -> None:
    (sandbox.config / "bad.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: File\nmetadata:\n  name: a\n   path: /x\n"
    )

    result = sandbox.run("validate", check=1)

    assert "  bad.yaml:5: invalid YAML: mapping values are not allowed" in result.stderr, (
        result.stderr
    )
