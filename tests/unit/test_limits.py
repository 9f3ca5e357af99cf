"""Every limit of `manifests.Limits`, crossed on a real config tree: the load is
refused with one clear error naming the file (and line, when there is one), the
limit and its value, and nothing grows without bound on the way (the loads that
would take gigabytes run under a lowered address-space limit in a child).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.manifests import Issue, Limits, ManifestError, ParseMemo, load, tree_digest
from reconciler.model import API_VERSION, DesiredState, ProviderSettings
from reconciler.registry import Registry

MiB = 1024 * 1024


@dataclasses.dataclass
class Tree:
    config: Path
    root: Path
    registry: Registry

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.config / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text.replace("$ROOT", str(self.root)))
        return path

    def load(self, limits: Limits | None = None, memo: ParseMemo | None = None) -> DesiredState:
        return load(self.config, self.registry, limits=limits, memo=memo)

    def issues(self, limits: Limits | None = None, memo: ParseMemo | None = None) -> list[Issue]:
        with pytest.raises(ManifestError) as info:
            self.load(limits, memo)
        return info.value.issues


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "config"
    config.mkdir()
    return Tree(config, root, Registry.discover(ProviderSettings(roots=(str(root),))))


def file_doc(name: str, spec: str = "  content: hello\n") -> str:
    return (
        f"apiVersion: {API_VERSION}\nkind: File\nmetadata:\n  name: {name}\n"
        f"spec:\n  path: $ROOT/{name}\n{spec}"
    )


def files_doc(count: int, spec: str = "  content: hello\n") -> str:
    return "---\n".join(file_doc(f"f{i}", spec) for i in range(count))


def alias_bomb(string_bytes: int, fanout: int, levels: int) -> str:
    """One File whose template vars hold a string of `string_bytes` behind
    `fanout` aliases on each of `levels` levels: few nodes, huge once expanded."""
    lines = [f'    s0: &s0 "{"x" * string_bytes}"']
    for level in range(1, levels + 1):
        items = ", ".join([f"*s{level - 1}"] * fanout)
        lines.append(f"    s{level}: &s{level} [{items}]")
    return file_doc("bomb", "  template: t.j2\n  vars:\n" + "\n".join(lines) + "\n")


# --- the defaults ------------------------------------------------------------------


def test_the_defaults_are_the_documented_ones() -> None:
    assert Limits() == Limits(
        max_file_bytes=8 * MiB,
        max_tree_bytes=256 * MiB,
        max_files=100_000,
        max_nodes=200_000,
        max_expanded_bytes=16 * MiB,
        max_depth=100,
        max_resources=250_000,
        max_spec_bytes=256 * MiB,
    )
    assert Limits().max_resources > 120_000  # the N=100,000 benchmark's revision fits


# --- expanded bytes ----------------------------------------------------------------


def test_a_string_behind_many_aliases_is_refused_before_it_is_expanded(tree: Tree) -> None:
    # 1 MB behind 1,000 aliases on each of 3 levels: 3,003 nodes, 10^15 bytes expanded
    tree.write("t.j2", "hi\n")
    tree.write("bomb.yaml", alias_bomb(MiB, 1000, 3))
    [issue] = tree.issues()
    assert (issue.file, issue.line) == ("bomb.yaml", 1)
    assert issue.message == (
        "invalid YAML: aliases expand to over 16777216 bytes of text (max_expanded_bytes)"
    )


def test_expanded_bytes_are_counted_through_aliases_and_keys(tree: Tree) -> None:
    tree.write("t.j2", "hi\n")
    tree.write("a.yaml", alias_bomb(1000, 10, 1))  # about 11,000 characters once expanded
    limits = Limits(max_expanded_bytes=20_000)
    assert set(tree.load(limits).resources) == {"File/bomb"}
    [issue] = tree.issues(dataclasses.replace(limits, max_expanded_bytes=10_000))
    assert "over 10000 bytes of text (max_expanded_bytes)" in issue.message


def test_the_node_limit_still_holds_and_names_itself(tree: Tree) -> None:
    tree.write("t.j2", "hi\n")
    tree.write("a.yaml", alias_bomb(1, 100, 3))  # 1,010,101 nodes expanded
    [issue] = tree.issues()
    assert (issue.file, issue.line) == ("a.yaml", 1)
    assert issue.message == "invalid YAML: aliases expand to over 200000 nodes (max_nodes)"


# --- nesting depth -----------------------------------------------------------------


def nested_vars(depth: int) -> str:
    return file_doc("deep", f"  template: t.j2\n  vars:\n    x: {'[' * depth}{']' * depth}\n")


@pytest.mark.parametrize("depth", [150, 990, 5000])
def test_deep_flow_sequences_are_an_error_with_a_line_never_a_recursion_error(
    tree: Tree, depth: int
) -> None:
    tree.write("t.j2", "hi\n")
    tree.write("deep.yaml", nested_vars(depth))
    [issue] = tree.issues()
    assert issue.file == "deep.yaml" and issue.line == 9, issue
    assert "RecursionError" not in issue.message
    if depth < 1000:  # libyaml itself refuses 1,000 levels and more
        assert issue.message == "invalid YAML: nested deeper than 100 levels (max_depth)"
    else:
        assert "maximum nesting depth" in issue.message


def test_nesting_under_the_limit_is_parsed_validated_and_dumped(tree: Tree) -> None:
    tree.write("t.j2", "{{ x | length }}\n")
    tree.write("deep.yaml", nested_vars(90))  # 5 levels of document above the list
    desired = tree.load()
    assert desired.resources["File/deep"].spec.content == "1\n"  # type: ignore[attr-defined]
    assert len(desired.resources["File/deep"].spec.model_dump_json()) > 180


def test_depth_is_counted_through_aliases(tree: Tree) -> None:
    # each anchor one level deeper than the last: shallow text, deep data
    chain = "\n".join(f"    l{i}: &l{i} [*l{i - 1}]" for i in range(1, 200))
    tree.write("t.j2", "hi\n")
    tree.write("a.yaml", file_doc("a", f"  template: t.j2\n  vars:\n    l0: &l0 [x]\n{chain}\n"))
    [issue] = tree.issues()
    assert issue.file == "a.yaml" and issue.line is not None
    assert issue.message == "invalid YAML: nested deeper than 100 levels (max_depth)"


def test_a_deep_tag_that_pyyaml_builds_is_an_error_too(tree: Tree) -> None:
    text = file_doc("a", "  template: t.j2\n  vars:\n    x: !!set\n")
    text += "".join("  " * (i + 3) + "? !!set\n" for i in range(400))
    tree.write("t.j2", "hi\n")
    tree.write("a.yaml", text)
    [issue] = tree.issues()
    assert issue.file == "a.yaml" and issue.line is not None
    assert "nested" in issue.message


# --- files ---------------------------------------------------------------------------


def test_a_manifest_in_a_subdirectory_over_the_file_limit(tree: Tree) -> None:
    tree.write("a.yaml", file_doc("a"))
    tree.write("deep/er/b.yaml", file_doc("b", f"  content: {'x' * 2000}\n"))
    [issue] = tree.issues(Limits(max_file_bytes=1000))
    assert issue.file == "deep/er/b.yaml" and issue.line is None
    assert issue.message.endswith("over the limit of 1000 (max_file_bytes)")


def test_a_source_file_over_the_file_limit(tree: Tree) -> None:
    tree.write("a.yaml", file_doc("a", "  source: files/big.bin\n"))
    tree.write("files/big.bin", b"y" * (8 * MiB + 1))
    [issue] = tree.issues()
    assert issue.file == "files/big.bin" and issue.line is None
    assert issue.message == (
        f"file is {8 * MiB + 1} bytes, over the limit of {8 * MiB} (max_file_bytes)"
    )


def test_too_many_files(tree: Tree) -> None:
    for i in range(5):
        tree.write(f"d{i}/f.txt", "x")
    tree.write(".git/ignored", "hidden files are not counted")
    assert tree.load(Limits(max_files=5)).resources == {}
    tree.write("d5/f.txt", "x")
    [issue] = tree.issues(Limits(max_files=5))
    assert issue.line is None and issue.message == "over 5 files (max_files)"


def test_too_many_bytes_in_the_tree(tree: Tree) -> None:
    tree.write("a.yaml", file_doc("a"))
    tree.write("data/one.txt", "x" * 600)
    tree.write("data/two.txt", "x" * 600)
    [issue] = tree.issues(Limits(max_tree_bytes=1000))
    assert issue.line is None
    assert issue.message == "the tree is over 1000 bytes (max_tree_bytes)"


def test_a_manifest_linked_from_outside_the_tree_is_not_read(tree: Tree, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text(file_doc("stolen").replace("$ROOT", str(tree.root)))
    (tree.config / "x.yaml").symlink_to(outside)
    tree.write("real.yaml", file_doc("real"))
    [issue] = tree.issues()
    assert issue.file == "x.yaml" and issue.line is None
    assert issue.message == "a symbolic link to outside the config tree; not read"
    (tree.config / "x.yaml").unlink()
    (tree.config / "sub").mkdir()
    (tree.config / "sub" / "alias.yaml").symlink_to(tree.config / "real.yaml")
    with pytest.raises(ManifestError, match="duplicate resource id File/real"):
        tree.load()  # the link inside the tree is read like any file


# --- resources and specs -------------------------------------------------------------


def test_too_many_resources(tree: Tree) -> None:
    tree.write("a.yaml", files_doc(5))
    assert len(tree.load(Limits(max_resources=5)).resources) == 5
    tree.write("b.yaml", file_doc("six"))
    [issue] = tree.issues(Limits(max_resources=5))
    assert (issue.file, issue.line) == ("b.yaml", 1)
    assert issue.message == "over the limit of 5 resources (max_resources)"


def test_resources_from_the_parse_memo_count_too(tree: Tree) -> None:
    limits = Limits(max_resources=5)
    memo = ParseMemo()
    tree.write("a.yaml", files_doc(5))
    tree.load(limits, memo)
    tree.write("b.yaml", file_doc("six"))  # a.yaml now comes from the memo
    [issue] = tree.issues(limits, memo)
    assert issue.message == "over the limit of 5 resources (max_resources)"


def test_one_source_used_by_many_resources_counts_each_time(tree: Tree) -> None:
    # a 1 MB source is small, a thousand Files of it are not: the specs are counted
    tree.write("big.txt", "z" * 100_000)
    tree.write("a.yaml", files_doc(30, "  source: big.txt\n"))
    limits = Limits(max_spec_bytes=2_000_000)
    [issue] = tree.issues(limits)
    assert issue.file == "a.yaml" and issue.line is not None and issue.line > 1
    assert issue.message == ("the specs of this revision are over 2000000 bytes (max_spec_bytes)")
    tree.write("a.yaml", files_doc(19, "  source: big.txt\n"))
    assert len(tree.load(limits).resources) == 19


def test_spec_bytes_of_memoized_files_count_too(tree: Tree) -> None:
    limits = Limits(max_spec_bytes=2_000_000)
    memo = ParseMemo()
    tree.write("big.txt", "z" * 100_000)
    tree.write("a.yaml", files_doc(15, "  source: big.txt\n"))
    tree.load(limits, memo)
    tree.write("b.yaml", "---\n".join(file_doc(f"g{i}", "  source: big.txt\n") for i in range(6)))
    [issue] = tree.issues(limits, memo)
    assert issue.file == "b.yaml" and "(max_spec_bytes)" in issue.message


def test_errors_stop_after_a_thousand(tree: Tree) -> None:
    tree.write("a.yaml", "---\n".join(["- not a mapping\n"] * 5000))
    issues = tree.issues()
    assert len(issues) == 1001
    assert issues[-1] == Issue("a.yaml", None, "", "stopped after 1000 errors")


def test_a_value_json_cannot_hold_is_an_error_not_a_crash(tree: Tree) -> None:
    tree.write("t.j2", "hi\n")
    tree.write("a.yaml", file_doc("a", "  template: t.j2\n  vars:\n    b: !!binary /w==\n"))
    [issue] = tree.issues()
    assert (issue.file, issue.line, issue.field) == ("a.yaml", 6, "spec")
    assert issue.message.startswith("a value cannot be stored as JSON")


# --- bounded memory ------------------------------------------------------------------

CHILD = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from reconciler.manifests import ManifestError, load
from reconciler.model import ProviderSettings
from reconciler.registry import Registry
registry = Registry.discover(ProviderSettings(roots=(sys.argv[2],)))
try:
    load(Path(sys.argv[1]), registry)
except ManifestError as exc:
    print(exc)
    sys.exit(1)
"""


@pytest.fixture
def bombs(tree: Tree) -> Iterator[Tree]:
    tree.write("t.j2", "hi\n")
    yield tree


@pytest.mark.parametrize(
    "name, string_bytes, fanout, levels",
    [
        ("wide", MiB, 1000, 1),  # 1 GB in one list
        ("nested", MiB, 100, 3),  # 10^12 bytes, 10,101 nodes
        ("small", 4 * MiB, 4, 2),  # 64 MiB: only a few times the limit
    ],
)
def test_alias_bombs_stay_under_two_gib(
    bombs: Tree, name: str, string_bytes: int, fanout: int, levels: int
) -> None:
    bombs.write(f"{name}.yaml", alias_bomb(string_bytes, fanout, levels))
    limit = 2 * 1024 * MiB
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(limit=limit), str(bombs.config), str(bombs.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert f"{name}.yaml:1: invalid YAML: aliases expand to over" in result.stdout
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != limit  # only the child was limited


def test_a_fifo_is_never_opened(tree: Tree) -> None:
    tree.write("a.yaml", file_doc("a"))
    os.mkfifo(tree.config / "pipe.yaml")  # in the tree: not a regular file, not read
    assert set(tree.load().resources) == {"File/a"}
    with pytest.raises(ManifestError) as info:  # given as the path: refused, not read
        load(tree.config / "pipe.yaml", tree.registry)
    [issue] = info.value.issues
    assert (issue.file, issue.message) == ("pipe.yaml", "not a regular file")


def test_the_tree_digest_of_local_mode_agrees_with_a_load_and_has_no_limits(tree: Tree) -> None:
    tree.write("a.yaml", file_doc("a", "  source: files/s.txt\n"))
    tree.write("files/s.txt", "source\n")
    tree.write(".hidden/x.yaml", "not read")
    assert tree.load().revision == tree_digest(tree.config)[:12]
    tree.write("files/big.bin", b"y" * (8 * MiB + 1))  # over a load's limit, not the digest's
    before = tree_digest(tree.config)
    tree.write("files/big.bin", b"z" * (8 * MiB + 1))
    assert tree_digest(tree.config) != before
