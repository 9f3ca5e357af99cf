"""Bad input end to end: every error exits non-zero with one clear message that
names the file, line, resource and field, never a traceback (the sandbox fixture
checks stderr), and an invalid revision applies nothing at all.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Sandbox, doc, docs
from tests.providers.conformance import tree_snapshot

HEAD = "apiVersion: reconciler/v1\n"


# load-time errors: the whole revision is rejected


@dataclass(frozen=True)
class Bad:
    name: str
    text: Callable[[Path], str]
    """bad.yaml, given the managed root."""
    expected: tuple[str, ...]
    """Substrings of stderr: where (file:line), which field or resource, and why."""
    extra_files: tuple[tuple[str, str], ...] = ()


BAD = [
    Bad(
        "invalid-yaml",
        lambda root: HEAD + f"kind: File\nmetadata: {{name: x\nspec: {{path: {root}/x}}\n",
        ("bad.yaml:3:", "invalid YAML: unclosed flow mapping ('{') started at line 3,", "line 4"),
    ),
    Bad(
        "not-a-mapping",
        lambda root: "- just\n- a list\n",
        ("bad.yaml:1:", "expected a mapping with apiVersion, kind, metadata, spec"),
    ),
    Bad(
        "not-utf8",
        lambda root: "kind: File\nmetadata: {name: caf\udce9}\n",
        ("bad.yaml", "not UTF-8"),
    ),
    Bad(
        "duplicate-key",
        lambda root: (
            HEAD + f"kind: File\nmetadata: {{name: x}}\nspec:\n  path: {root}/x\n  content: a\n"
            "  content: b\n"
        ),
        ("bad.yaml:7:", "duplicate key 'content'", "first at line 6"),
    ),
    Bad(
        "unknown-kind",
        lambda root: HEAD + f"kind: Fiel\nmetadata: {{name: x}}\nspec: {{path: {root}/x}}\n",
        ("bad.yaml:2:", "kind: unknown kind 'Fiel'", "known kinds: ", "Directory, File, "),
    ),
    Bad(
        "unknown-spec-field",
        lambda root: (
            HEAD + f"kind: File\nmetadata: {{name: x}}\nspec:\n  path: {root}/x\n  contnet: a\n"
        ),
        ("bad.yaml:6:", "spec.contnet: unknown field", "expected one of path, content"),
    ),
    Bad(
        "unknown-envelope-field",
        lambda root: doc("File", "x", {"path": f"{root}/x", "content": "a"}) + "specs: {}\n",
        ("bad.yaml:", "specs: unknown field", "apiVersion, kind, metadata, spec, policy"),
    ),
    Bad(
        "unknown-policy-field",
        lambda root: doc("File", "x", {"path": f"{root}/x", "content": "a"}, {"dependson": []}),
        ("bad.yaml:", "policy.dependson: unknown field", "dependsOn"),
    ),
    Bad(
        "unquoted-mode",
        lambda root: (
            HEAD + f"kind: File\nmetadata: {{name: x}}\nspec:\n  path: {root}/x\n  content: a\n"
            "  mode: 0640\n"
        ),
        ("bad.yaml:7:", "spec.mode", "quote it"),
    ),
    Bad(
        "duplicate-id",
        lambda root: doc("File", "good", {"path": f"{root}/other.txt", "content": "a"}),
        (
            "bad.yaml:",
            "metadata.name: duplicate resource id File/good",
            "first defined at app.yaml:1",
        ),
    ),
    Bad(
        "path-claimed-twice",
        lambda root: doc("Symlink", "x", {"path": f"{root}/good.txt", "target": "a"}),
        ("bad.yaml:", "spec.path", "also managed by File/good (app.yaml:1)"),
    ),
    Bad(
        "missing-dependency",
        lambda root: doc(
            "File", "x", {"path": f"{root}/x", "content": "a"}, {"dependsOn": ["Directory/nope"]}
        ),
        ("bad.yaml:", "policy.dependsOn[0]", "Directory/nope", "not defined"),
    ),
    Bad(
        "cycle",
        lambda root: docs(
            doc("File", "x", {"path": f"{root}/x", "content": "a"}, {"dependsOn": ["File/y"]}),
            doc("File", "y", {"path": f"{root}/y", "content": "a"}, {"dependsOn": ["File/x"]}),
        ),
        ("bad.yaml:", "policy.dependsOn", "dependency cycle: File/x -> File/y -> File/x"),
    ),
    Bad(
        "path-outside-root",
        lambda root: doc("File", "x", {"path": str(root.parent / "elsewhere.txt"), "content": "a"}),
        ("bad.yaml:", "spec.path", "elsewhere.txt is outside the allowed roots"),
    ),
    Bad(
        "dotdot-escape",
        lambda root: doc("File", "x", {"path": f"{root}/../elsewhere.txt", "content": "a"}),
        ("bad.yaml:", "spec.path", "'..' are not allowed", "elsewhere.txt"),
    ),
    Bad(
        "missing-source",
        lambda root: doc("File", "x", {"path": f"{root}/x", "source": "files/missing.conf"}),
        ("bad.yaml:", "spec.source", "'files/missing.conf' not found"),
    ),
    Bad(
        "source-escapes-config",
        lambda root: doc("File", "x", {"path": f"{root}/x", "source": "../outside.txt"}),
        ("bad.yaml:", "spec.source", "outside the config repository"),
        extra_files=(("../outside.txt", "planted\n"),),
    ),
    Bad(
        "template-undefined-variable",
        lambda root: doc(
            "File", "x", {"path": f"{root}/x", "template": "app.j2", "vars": {"port": 80}}
        ),
        ("bad.yaml:", "spec.template", "app.j2", "'workers' is undefined"),
        extra_files=(("app.j2", "port = {{ port }}\nworkers = {{ workers }}\n"),),
    ),
    Bad(
        "template-syntax-error",
        lambda root: doc("File", "x", {"path": f"{root}/x", "template": "app.j2"}),
        ("bad.yaml:", "spec.template", "app.j2:2"),
        extra_files=(("app.j2", "ok\n{% if %}\n"),),
    ),
]


@pytest.mark.parametrize("bad", BAD, ids=lambda b: b.name)
def test_an_invalid_revision_is_rejected_whole(sandbox: Sandbox, bad: Bad) -> None:
    good = sandbox.root / "good.txt"
    sandbox.write("app.yaml", doc("File", "good", {"path": str(good), "content": "good\n"}))
    for name, text in bad.extra_files:
        target = sandbox.config / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    text = bad.text(sandbox.root)
    (sandbox.config / "bad.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
    before = tree_snapshot(sandbox.root)

    result = sandbox.run("apply", check=1)

    for expected in bad.expected:
        assert expected in result.stderr, f"{expected!r} not in:\n{result.stderr}"
    assert "nothing applied" in result.stderr
    assert result.stdout == ""
    assert not good.exists(), "a valid document of a rejected revision was applied"
    assert tree_snapshot(sandbox.root) == before
    assert not sandbox.state.exists()


def test_a_rejected_revision_keeps_the_last_good_one(sandbox: Sandbox) -> None:
    root = sandbox.root
    sandbox.write(
        "app.yaml",
        docs(
            doc("File", "a", {"path": str(root / "a.txt"), "content": "v1\n"}),
            doc("File", "b", {"path": str(root / "b.txt"), "content": "b\n"}),
            doc("File", "c", {"path": str(root / "c.txt"), "content": "c\n"}),
        ),
    )
    sandbox.run("apply", check=0)
    before = tree_snapshot(root)
    # v2: a changes, c is removed, d is new, and one document is broken
    sandbox.write(
        "app.yaml",
        docs(
            doc("File", "a", {"path": str(root / "a.txt"), "content": "v2\n"}),
            doc("File", "b", {"path": str(root / "b.txt"), "content": "b\n"}),
            doc("File", "d", {"path": str(root / "d.txt"), "content": "d\n"}),
            doc("File", "broken", {"path": str(root / "e.txt"), "content": "e\n", "mode": "rw"}),
        ),
    )

    rejected = sandbox.run("apply", check=1)

    assert "app.yaml:" in rejected.stderr and "spec.mode" in rejected.stderr
    assert tree_snapshot(root) == before
    planned = sandbox.run("plan", check=1)
    assert "spec.mode" in planned.stderr


@pytest.mark.parametrize("content", [b"\x00garbage" * 100, b"SQLite format 3\x00garbage"])
def test_a_corrupt_state_database_is_reported(sandbox: Sandbox, content: bytes) -> None:
    path = sandbox.root / "a.txt"
    sandbox.write("a.yaml", doc("File", "a", {"path": str(path), "content": "x\n"}))
    sandbox.state.mkdir()
    database = sandbox.state / "state.db"
    database.write_bytes(content)

    for command in ("apply", "plan"):
        result = sandbox.run(command, check=1)
        assert "state database" in result.stderr and str(database) in result.stderr
    assert not path.exists()
    assert database.read_bytes() == content


# errors while applying: reported per resource, the others go on


def test_a_directory_where_a_file_is_wanted(sandbox: Sandbox) -> None:
    root = sandbox.root
    occupied = root / "conf.d"
    occupied.mkdir()
    (occupied / "local.conf").write_text("mine\n")
    sandbox.write(
        "app.yaml",
        docs(
            doc("File", "conf", {"path": str(occupied), "content": "x = 1\n"}),
            doc("File", "other", {"path": str(root / "other.conf"), "content": "y = 2\n"}),
            doc("Symlink", "link", {"path": str(root / "link"), "target": "other.conf"}),
        ),
    )
    kept = tree_snapshot(occupied)

    result = sandbox.run("apply", check=1)

    failed = [line for line in result.stdout.splitlines() if "File/conf" in line]
    assert len(failed) == 1, result.stdout
    assert failed[0].startswith("failed")
    assert str(occupied) in failed[0] and "is a directory" in failed[0]
    assert "1 failed" in result.stdout and "2 created" in result.stdout
    assert (root / "other.conf").read_text() == "y = 2\n"
    assert os.readlink(root / "link") == "other.conf"
    assert tree_snapshot(occupied) == kept


def test_a_failing_resource_blocks_only_its_dependents(sandbox: Sandbox) -> None:
    root = sandbox.root
    (root / "taken").mkdir()
    (root / "srv").write_text("a file where a directory is wanted\n")
    sandbox.write(
        "app.yaml",
        docs(
            doc("File", "broken", {"path": str(root / "taken"), "content": "x\n"}),
            doc(
                "File",
                "after",
                {"path": str(root / "after.txt"), "content": "x\n"},
                {"dependsOn": ["File/broken"]},
            ),
            doc("Directory", "srv", {"path": str(root / "srv")}),
            doc("File", "inside", {"path": str(root / "srv/app.conf"), "content": "x\n"}),
            doc("File", "independent", {"path": str(root / "independent.txt"), "content": "x\n"}),
        ),
    )

    result = sandbox.run("apply", check=1)

    lines = result.stdout.splitlines()
    assert any(
        line.startswith("blocked") and "File/after" in line and "File/broken (Failed)" in line
        for line in lines
    ), result.stdout
    assert any(
        line.startswith("blocked") and "File/inside" in line and "Directory/srv (Failed)" in line
        for line in lines
    ), result.stdout
    assert any(line.startswith("failed") and "Directory/srv" in line for line in lines)
    assert "1 created" in result.stdout
    assert "2 failed, 2 blocked" in result.stdout
    assert (root / "independent.txt").read_text() == "x\n"
    assert not (root / "after.txt").exists()
    assert (root / "srv").read_text() == "a file where a directory is wanted\n"

    # once the obstacles are gone, the failed and the blocked converge
    (root / "taken").rmdir()
    (root / "srv").unlink()
    fixed = sandbox.run("apply", check=0)
    assert "4 created" in fixed.stdout and "1 unchanged" in fixed.stdout
    assert (root / "after.txt").exists() and (root / "srv/app.conf").exists()


# permission denied, as an unprivileged user

_PR_SET_KEEPCAPS = 8
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_CAP_DAC_READ_SEARCH = 2
_CAPABILITY_VERSION_3 = 0x20080522
NOBODY = 65534


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _become_nobody() -> Callable[[], None]:
    """A preexec_fn: the child runs as uid/gid 65534 with no groups, keeping only
    CAP_DAC_READ_SEARCH (read and search anywhere, write nothing it does not own).

    Plain `user=65534` cannot work here: the interpreter lives under /root (0700),
    so nobody could not even start it. Read-search is not write permission, which
    is what this test is about."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    bit = 1 << _CAP_DAC_READ_SEARCH
    data[0].effective = data[0].permitted = data[0].inheritable = bit

    def preexec() -> None:
        if libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS)")
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset")
        if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_READ_SEARCH, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAP_AMBIENT_RAISE)")

    return preexec


@pytest.fixture
def open_sandbox() -> Iterator[Sandbox]:
    """A sandbox that user nobody can reach: pytest's tmp_path sits under a 0700
    directory, and click checks paths with access(2), which ignores capabilities."""
    with tempfile.TemporaryDirectory(prefix="reconciler-e2e-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)
        (base / "root").mkdir()
        (base / "config").mkdir()
        yield Sandbox(root=base / "root", config=base / "config", state=base / "state")


def test_permission_denied_as_an_unprivileged_user(open_sandbox: Sandbox) -> None:
    sandbox = open_sandbox
    root = sandbox.root
    managed = root / "srv"
    managed.mkdir(mode=0o755)
    os.chmod(managed, 0o755)
    public = root / "public"
    public.mkdir()
    os.chown(public, NOBODY, NOBODY)
    sandbox.state.mkdir()
    os.chown(sandbox.state, NOBODY, NOBODY)
    sandbox.write(
        "app.yaml",
        docs(
            doc("Directory", "srv", {"path": str(managed), "mode": "0755", "owner": "root"}),
            doc("File", "config", {"path": str(managed / "app.conf"), "content": "x\n"}),
            doc("File", "public", {"path": str(public / "note.txt"), "content": "hi\n"}),
        ),
    )

    result = sandbox.run("apply", check=1, preexec_fn=_become_nobody())

    failed = [line for line in result.stdout.splitlines() if "File/config" in line]
    assert len(failed) == 1 and failed[0].startswith("failed"), result.stdout
    assert str(managed / "app.conf") in failed[0]
    assert "Permission denied" in failed[0] or "permission denied" in failed[0]
    assert "1 created, 0 updated" in result.stdout and "1 unchanged" in result.stdout
    assert os.listdir(managed) == []
    note = public / "note.txt"
    assert note.read_text() == "hi\n" and os.stat(note).st_uid == NOBODY
