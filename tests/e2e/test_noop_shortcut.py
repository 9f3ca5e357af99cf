"""The no-op shortcut of `reconciler apply` (reconciler/noop.py, decision 0131).

An apply that changed nothing records its inputs and the facts of every object;
the next apply with the same inputs whose objects show the same facts prints the
recorded result without starting the engine (its JSON says `engine: 0.0`). Each
test changes one thing the result depends on and checks that the real command
(a process, as users run it) takes the full path and does what the full path
does: heals, reports, refuses.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler import noop
from tests.conftest import Sandbox, doc, docs

pytestmark = pytest.mark.timeout(120)


def _apply(
    sandbox: Sandbox, *extra: str, check: int = 0, env: dict[str, str] | None = None
) -> dict[str, Any]:
    env = env if env is not None else _env()  # a RECONCILER_* variable would turn it off
    result = sandbox.run("apply", "--json", "--no-progress", *extra, check=check, env=env)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _short(report: dict[str, Any]) -> bool:
    """Whether the shortcut answered: the engine did not run."""
    return bool(report["timings"]["engine"] == 0.0)


def _tree(sandbox: Sandbox) -> dict[str, Path]:
    root = sandbox.root
    paths = {"dir": root / "app", "file": root / "app" / "app.conf", "link": root / "current"}
    sandbox.write(
        "app.yaml",
        docs(
            doc("Directory", "app", {"path": str(paths["dir"]), "mode": "0755"}),
            doc(
                "File",
                "conf",
                {"path": str(paths["file"]), "content": "port = 80\n", "mode": "0644"},
            ),
            doc("Symlink", "current", {"path": str(paths["link"]), "target": "app"}),
        ),
    )
    return paths


def _recorded(sandbox: Sandbox) -> dict[str, Path]:
    """The tree applied, then a no-op that records, then one answered by the record."""
    paths = _tree(sandbox)
    assert _apply(sandbox)["counts"]["created"] == 3
    first = _apply(sandbox)
    assert not _short(first) and first["counts"]["unchanged"] == 3
    assert (sandbox.state / "cache" / noop.RECORD).is_file()
    second = _apply(sandbox)
    assert _short(second), second
    assert {k: v for k, v in second.items() if k != "timings"} == {
        k: v for k, v in first.items() if k != "timings"
    }
    return paths


def test_a_second_no_op_is_answered_by_the_record_and_says_what_the_full_path_says(
    sandbox: Sandbox,
) -> None:
    _recorded(sandbox)
    full = sandbox.run("apply", "--no-progress", "--no-color", env=_env(RECONCILER_X="1"))
    short = sandbox.run("apply", "--no-progress", "--no-color", check=0, env=_env())
    assert full.stdout.split(". (")[0] == short.stdout.split(". (")[0]
    assert short.stdout.startswith("Apply complete: 0 created, 0 updated, 0 healed")
    assert short.stderr == ""


@pytest.mark.parametrize("edit", ["content", "same-size content", "mode", "removed", "link"])
def test_a_changed_object_takes_the_full_path_and_is_healed(sandbox: Sandbox, edit: str) -> None:
    paths = _recorded(sandbox)
    if edit == "content":
        paths["file"].write_text("port = 8080\n")
    elif edit == "same-size content":
        paths["file"].write_text("port = 81\n")
    elif edit == "mode":
        os.chmod(paths["file"], 0o600)
    elif edit == "removed":
        paths["file"].unlink()
    else:
        paths["link"].unlink()
        paths["link"].symlink_to("elsewhere")
    report = _apply(sandbox)
    assert not _short(report)
    assert report["counts"]["healed"] + report["counts"]["created"] == 1, report
    assert paths["file"].read_text() == "port = 80\n"
    assert os.readlink(paths["link"]) == "app"


def test_a_changed_manifest_or_option_takes_the_full_path(sandbox: Sandbox) -> None:
    paths = _recorded(sandbox)
    (sandbox.config / "README.md").write_text("any file of the tree counts\n")
    assert not _short(_apply(sandbox))
    assert _short(_apply(sandbox))  # recorded again
    assert not _short(_apply(sandbox, "--concurrency", "3"))
    assert not _short(_apply(sandbox, "--allow-commands"))
    unknown = sandbox.run("apply", "--json", "-v", check=1, env=_env())  # click answers
    assert "No such option '-v'" in unknown.stderr
    assert not _short(_apply(sandbox, env=_env(RECONCILER_APPLY_RETRIES="2")))
    other_root = sandbox.root.parent / "other-root"
    other_root.mkdir()
    assert not _short(_apply(sandbox, "--root", str(other_root)))  # another root
    assert paths["file"].read_text() == "port = 80\n"


def test_a_parent_swapped_for_a_symlink_is_not_followed_out_of_the_roots(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The shortcut reads objects through the confined filesystem: with the managed
    directory replaced by a link to an identical one outside the root, it must not
    read there and call it in sync; the full path heals the directory instead."""
    paths = _recorded(sandbox)
    outside = tmp_path / "outside"
    os.rename(paths["dir"], outside)
    paths["dir"].symlink_to(outside)
    report = _apply(sandbox)
    assert not _short(report)
    assert report["counts"]["healed"] == 2, report  # the directory, and the file in it
    assert paths["dir"].is_dir() and not paths["dir"].is_symlink()
    assert paths["file"].read_text() == "port = 80\n"
    assert (outside / "app.conf").read_text() == "port = 80\n"  # left alone


def test_a_tampered_record_or_a_changed_store_takes_the_full_path(sandbox: Sandbox) -> None:
    _recorded(sandbox)
    record = sandbox.state / "cache" / noop.RECORD
    raw = record.read_bytes()
    record.write_bytes(raw.replace(b'"unchanged":3', b'"unchanged":4'))
    report = _apply(sandbox)
    assert not _short(report) and report["counts"]["unchanged"] == 3
    assert _short(_apply(sandbox))
    # something else wrote to the store: an event, as a daemon's pass would
    db = sqlite3.connect(sandbox.state / "state.db")
    with db:
        db.execute(
            "INSERT INTO events (ts, id, from_state, to_state, event) "
            "VALUES (0, 'File/conf', 'InSync', 'InSync', 'resync')"
        )
    db.close()
    report = _apply(sandbox)
    assert not _short(report) and report["counts"]["unchanged"] == 3
    assert _short(_apply(sandbox))


def test_a_locked_state_directory_is_refused_as_by_the_full_path(sandbox: Sandbox) -> None:
    _recorded(sandbox)
    with (sandbox.state / "lock").open("r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = sandbox.run("apply", "--json", "--no-progress", check=1, env=_env())
    assert "in use by another reconciler" in result.stderr


def test_secrets_and_commands_are_never_recorded(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secrets" / "token"
    secret.parent.mkdir()
    secret.write_text("s3cret\n")
    target = sandbox.root / "token.conf"
    content = {"valueFrom": {"file": str(secret)}}
    token = doc("File", "token", {"path": str(target), "content": content})
    sandbox.write("app.yaml", token)
    extra = ("--secret-dir", str(secret.parent))
    for _ in range(3):
        assert not _short(_apply(sandbox, *extra))
    assert not (sandbox.state / "cache" / noop.RECORD).exists()
    secret.write_text("rotated\n")
    _apply(sandbox, *extra)
    assert target.read_text() == "rotated\n"

    made = sandbox.root / "made"
    sandbox.write(
        "app.yaml",
        docs(
            token,
            doc("File", "plain", {"path": str(sandbox.root / "plain"), "content": "x\n"}),
            doc("Command", "hello", {"argv": ["touch", str(made)], "creates": str(made)}),
        ),
    )
    for _ in range(3):  # Command is not a kind whose facts say all it observes
        assert not _short(_apply(sandbox, *extra, "--allow-commands"))
    assert not (sandbox.state / "cache" / noop.RECORD).exists()


def test_the_parser_reads_only_what_it_knows() -> None:
    env: dict[str, str] = {}
    parsed = noop.parse(["apply", "cfg", "--root", "/r", "--root=/s", "--json"], env)
    assert parsed is not None
    assert parsed.roots == ("/r", "/s") and parsed.as_json and parsed.state_dir == ".reconciler"
    for args in (
        ["plan", "cfg"],
        ["apply"],
        ["apply", "a", "b"],
        ["apply", "cfg", "--root"],
        ["apply", "cfg", "--rot", "/r"],
        ["apply", "cfg", "-h"],
        ["apply", "cfg", "--concurrency", "0"],
        ["apply", "cfg", "--concurrency", "x"],
        ["apply", "cfg", "--max-prune-share", "2"],
        ["apply", "cfg", "--json", "--json"],
        ["apply", "cfg", "--"],
        ["apply", "cfg", "--allow-commands=1"],
        ["apply", "cfg", "--no-such-option"],
    ):
        assert noop.parse(args, env) is None, args
    assert noop.parse(["apply", "cfg"], {"RECONCILER_ROOT": "/r"}) is None
    assert noop.parse(["apply", "cfg"], {"RECONCILER_SECRET_TOKEN": "x"}) is not None
    assert noop.parse(["apply", "cfg"], {"RECONCILER_SECRET_DIRS": "/s"}) is None
    assert noop.parse(["apply", "cfg", "--full-check"], {}) is None
    state = noop.parse(["apply", "cfg"], {"RECONCILER_STATE_DIR": "/st"})
    assert state is not None and state.state_dir == "/st"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(extra)
    return env


def test_the_console_entry_point_is_the_shortcut_then_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "reconciler" in result.stdout
