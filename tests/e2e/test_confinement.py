"""Confinement end to end, as an attacker with commit access to the config
repository (or a local user of the managed root) would try it, through the real
CLI (`validate`, `plan`, `apply`) and the real daemon: nothing outside the
allowed root is ever read, written, chmodded, chowned or deleted through a
symlink, whoever planted the link and whenever; leftover temporary files of a
killed run do not block the next one; paths the system would refuse are
load-time errors.

An outside directory holds a setuid sentinel file and a private directory with
known owners; after every attack it must be identical: content, mode, owner,
mtime and ctime (`tree_snapshot`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from reconciler.confined import TEMP_SUFFIX
from tests.conftest import Sandbox, doc, docs
from tests.e2e.daemon_harness import Daemons, file_doc
from tests.gitservers import WorkClone
from tests.providers.conformance import tree_snapshot

SECRET = "root:TOP-SECRET-OUTSIDE-THE-ROOT\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside every root: a setuid file owned by 1:1, a 0700
    directory owned by 2:2 holding a file."""
    path = tmp_path / "outside"
    (path / "private").mkdir(parents=True)
    sentinel = path / "shadow"
    sentinel.write_text(SECRET)
    os.chown(sentinel, 1, 1)
    os.chmod(sentinel, 0o4750)
    (path / "private" / "x.conf").write_text("outside x\n")
    os.chown(path / "private", 2, 2)
    os.chmod(path / "private", 0o700)
    return path


def _attack(root: Path, outside: Path, *, ignore_content: bool) -> str:
    """A Symlink inside the root pointing outside, and a File and a Directory
    under it asking for new modes and owners; the File's content is the same as
    outside (so only metadata would change) or ignored."""
    content = "anything else\n" if ignore_content else SECRET
    policy = {"ignoreFields": ["/content"]} if ignore_content else None
    return docs(
        doc("Symlink", "escape", {"path": str(root / "escape"), "target": str(outside)}),
        doc(
            "File",
            "shadow",
            {
                "path": str(root / "escape/shadow"),
                "content": content,
                "mode": "6777",
                "owner": "0",
                "group": "0",
            },
            policy,
        ),
        doc(
            "Directory",
            "private",
            {"path": str(root / "escape/private"), "mode": "0777", "owner": "0", "group": "0"},
        ),
        doc("File", "inside", {"path": str(root / "inside.conf"), "content": "fine\n"}),
    )


def _failed_lines(stdout: str, rid: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("failed") and rid in line]


# 1. a symlink planted by a commit, metadata changes under it


@pytest.mark.parametrize("ignore_content", [False, True], ids=["same-content", "ignored"])
def test_a_committed_symlink_does_not_carry_mode_or_owner_outside(
    sandbox: Sandbox, outside: Path, ignore_content: bool
) -> None:
    root = sandbox.root
    sandbox.write("attack.yaml", _attack(root, outside, ignore_content=ignore_content))
    before = tree_snapshot(outside)

    first = sandbox.run("apply", check=1)
    second = sandbox.run("apply", check=1)  # the link exists now: the same again

    for result in (first, second):
        for rid, path in (("File/shadow", "shadow"), ("Directory/private", "private")):
            [line] = _failed_lines(result.stdout, rid)
            assert f"{root}/escape/{path} goes through the symlink {root}/escape" in line
        assert SECRET.strip() not in result.stdout + result.stderr
    assert os.readlink(root / "escape") == str(outside)
    assert (root / "inside.conf").read_text() == "fine\n"
    assert tree_snapshot(outside) == before


def test_plan_does_not_show_a_file_reached_through_a_symlink(
    sandbox: Sandbox, outside: Path
) -> None:
    root = sandbox.root
    os.symlink(outside, root / "escape")
    sandbox.write(
        "app.yaml",
        doc("File", "shadow", {"path": str(root / "escape/shadow"), "content": "mine\n"}),
    )
    before = tree_snapshot(outside)

    for args in (("plan",), ("plan", "--json")):
        result = sandbox.run(*args)
        assert result.returncode != 0
        shown = result.stdout + result.stderr
        assert "TOP-SECRET" not in shown
        assert f"goes through the symlink {root}/escape" in shown
    assert tree_snapshot(outside) == before


# 2. prune when a parent has since become a symlink


def test_prune_does_not_delete_through_a_parent_swapped_for_a_symlink(
    sandbox: Sandbox, outside: Path
) -> None:
    root = sandbox.root
    app = root / "app"
    sandbox.write(
        "app.yaml",
        docs(
            doc("File", "x", {"path": str(app / "private/x.conf"), "content": "mine\n"}),
            doc("Symlink", "l", {"path": str(app / "private/l"), "target": "x.conf"}),
            doc("Directory", "sub", {"path": str(app / "private/sub")}),
            doc("File", "keep", {"path": str(root / "keep.conf"), "content": "k\n"}),
        ),
    )
    sandbox.run("apply", check=0)
    # a local user (or anything) swaps the directory for a link to the outside
    os.rename(app, root / "app.old")
    os.symlink(outside, app)
    (outside / "private" / "l").symlink_to("x.conf")
    (outside / "private" / "sub").mkdir()
    before = tree_snapshot(outside)
    sandbox.write(
        "app.yaml", doc("File", "keep", {"path": str(root / "keep.conf"), "content": "k\n"})
    )

    result = sandbox.run("apply", "--max-prune-share", "1", check=1)

    for rid, name in (("File/x", "x.conf"), ("Symlink/l", "l"), ("Directory/sub", "sub")):
        [line] = _failed_lines(result.stdout, rid)
        assert f"{app}/private/{name} goes through the symlink {app}" in line
    assert tree_snapshot(outside) == before


# 3. temporary files left by a killed run


def _leftover(directory: Path, name: str) -> Path:
    path = directory / f".{name}.{os.urandom(8).hex()}{TEMP_SUFFIX}"
    path.write_text("half written by a killed apply\n")
    return path


def test_leftover_temp_files_do_not_outlive_the_next_apply_or_block_a_prune(
    sandbox: Sandbox,
) -> None:
    root = sandbox.root
    conf = root / "conf.d"

    def manifest(content: str) -> str:
        return docs(
            doc("Directory", "conf", {"path": str(conf)}),
            doc("File", "a", {"path": str(conf / "a.conf"), "content": content}),
            doc("Symlink", "b", {"path": str(conf / "b.conf"), "target": "a.conf"}),
            doc("File", "keep", {"path": str(root / "keep.conf"), "content": "k\n"}),
        )

    sandbox.write("app.yaml", manifest("a\n"))
    sandbox.run("apply", check=0)

    # what SIGKILLs in the middle of writes would leave
    _leftover(conf, "a.conf")
    _leftover(conf, "b.conf")
    _leftover(root, "keep.conf")
    (conf / "notes.tmp").write_text("not reconciler's\n")  # not one of ours: stays
    sandbox.write("app.yaml", manifest("a2\n"))  # an update in conf.d
    (root / "keep.conf").write_text("edited by hand\n")  # drift: a heal in the root

    sandbox.run("apply", check=0)

    assert sorted(os.listdir(conf)) == ["a.conf", "b.conf", "notes.tmp"]
    assert sorted(os.listdir(root)) == ["conf.d", "keep.conf"]

    # a prune of the directory: leftovers alone do not block it
    _leftover(conf, "a.conf")
    (conf / "notes.tmp").unlink()
    sandbox.write(
        "app.yaml", doc("File", "keep", {"path": str(root / "keep.conf"), "content": "k\n"})
    )
    pruned = sandbox.run("apply", "--max-prune-share", "1", check=0)
    assert "3 deleted" in pruned.stdout, pruned.stdout
    assert sorted(os.listdir(root)) == ["keep.conf"]


# 4. paths and modes the system would refuse: load-time errors with file:line:field

LONG_NAME = "é" * 128  # 256 bytes in UTF-8: over NAME_MAX
LONG_PATH = "d/" * 2048 + "x"  # over PATH_MAX


@pytest.mark.parametrize(
    ("name", "spec_yaml", "expected"),
    [
        ("nul", 'path: "{root}/a\\0b"', ("spec.path", "NUL")),
        ("name-max", "path: {root}/" + LONG_NAME, ("spec.path", "NAME_MAX", "256 bytes")),
        ("path-max", "path: {root}/" + LONG_PATH, ("spec.path", "PATH_MAX")),
        ("mode-leading-space", 'mode: " 0644"', ("spec.mode", "' 0644'", "no spaces")),
        ("mode-trailing-space", 'mode: "0644 "', ("spec.mode", "'0644 '")),
        ("mode-newline", 'mode: "0644\\n"', ("spec.mode", "'0644\\n'")),
        ("link-target-nul", 'target: "a\\0b"', ("spec.target",)),
        ("link-target-path-max", "target: " + LONG_PATH, ("spec.target", "PATH_MAX")),
    ],
)
def test_paths_and_modes_the_system_would_refuse_are_load_time_errors(
    sandbox: Sandbox, name: str, spec_yaml: str, expected: tuple[str, ...]
) -> None:
    root = sandbox.root
    kind = "Symlink" if name.startswith("link") else "File"
    other = ("target", "t") if kind == "Symlink" else ("content", "x\n")
    fields = {"path": f"{root}/x", other[0]: other[1]}
    key = spec_yaml.split(":", 1)[0]
    lines = [f"  {k}: {v}" for k, v in fields.items() if k != key]
    lines.append("  " + spec_yaml.format(root=root))
    text = f"apiVersion: reconciler/v1\nkind: {kind}\nmetadata:\n  name: x\nspec:\n"
    text += "\n".join(lines) + "\n"
    sandbox.write("bad.yaml", text)
    line = len(text.splitlines())  # the offending field is the last line

    for command in ("validate", "plan", "apply"):
        result = sandbox.run(command, check=1)
        assert f"bad.yaml:{line}:" in result.stderr, result.stderr
        for part in expected:
            assert part in result.stderr, result.stderr
    assert os.listdir(root) == []


# 5. the daemon


def _push(work: WorkClone, message: str, files: dict[str, str | None]) -> str:
    sha = work.commit(message, files)
    work.push()
    return sha


def test_the_daemon_refuses_a_committed_symlink_and_a_swapped_parent(
    work: WorkClone, root: Path, outside: Path, daemons: Daemons
) -> None:
    repo = Path(work.remote_url.removeprefix("file://"))
    sha1 = _push(
        work,
        "app",
        {
            "app.yaml": docs(
                file_doc("app", root / "app/private/x.conf", "mine\n"),
                file_doc("inside", root / "inside.conf", "fine\n"),
            )
        },
    )
    daemon = daemons.start(repo, root=root, interval="1s")
    daemon.wait_revision(sha1)
    daemon.settle()

    # a local user swaps the parent directory for a link to the outside; then a
    # commit drops the file (a prune through that link), plants a link of its
    # own to the outside and asks for modes and owners under it
    os.rename(root / "app", root / "app.old")
    os.symlink(outside, root / "app")
    before = tree_snapshot(outside)
    sha2 = _push(work, "attack", {"app.yaml": _attack(root, outside, ignore_content=True)})
    daemon.wait_revision(sha2, timeout=30)

    refused = {
        "File/app": f"{root}/app/private/x.conf goes through the symlink {root}/app",
        "File/shadow": f"{root}/escape/shadow goes through the symlink {root}/escape",
        "Directory/private": f"{root}/escape/private goes through the symlink {root}/escape",
    }
    for rid, message in refused.items():

        def failed(rid: str = rid) -> dict[str, Any] | None:
            found = daemon.resource(rid)
            return found if found is not None and found["state"] == "Failed" else None

        found = daemon.wait_until(failed, f"{rid} refused")
        assert found["lastError"] == (
            f"{message}; refusing to follow it (nothing is read, written or changed through a link)"
        )
    inside = daemon.resource("File/inside")
    assert inside is not None and inside["state"] == "InSync", inside
    assert os.readlink(root / "escape") == str(outside)
    daemon.sync()  # another pass: still nothing outside
    daemon.settle()
    assert tree_snapshot(outside) == before
    assert "TOP-SECRET" not in daemon.logs()
    daemon.stop()
    assert tree_snapshot(outside) == before
