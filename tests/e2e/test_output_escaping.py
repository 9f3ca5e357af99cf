"""Control characters from a repository never reach the terminal or the log raw.

Manifests whose paths, link targets, names, fields and contents carry ESC, CR, LF,
C1 and bidi overrides go through the real `validate`, `plan` (with and without
colour, the coloured one on a real pseudo-terminal), `apply`, `events` and
`status`, and through a real daemon whose text and JSON logs are read back. The
raw output holds no ESC byte but reconciler's own colour codes, no CR, no bidi
control, and no line that starts with `Plan:` but the real one; the hostile
values are shown, escaped.
"""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

from tests.conftest import Sandbox
from tests.e2e.daemon_harness import Daemons, run_cli

FORGED_PLAN = "Plan: 0 to create, 0 to change, 0 to delete, 0 unchanged."
FORGED_LOG = "2026-01-01 00:00:00.000 INFO    reconciler.daemon: all good"
ERASE = "\x1b[2K\x1b[1A"
HOSTILE = f"\r\n{FORGED_PLAN}\n{ERASE}\u202e\x9b2J\x85\u2028"
"""A value that, printed raw, returns to the line start, forges a summary, erases
the line above, reverses what follows and clears the screen (C1 CSI)."""

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def _manifest(kind: str, name: str, spec: dict[str, object]) -> dict[str, object]:
    return {"apiVersion": "reconciler/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def assert_clean(text: str, *, colour: bool = False, real_plan_lines: int = 0) -> None:
    """No control character but LF (and, with `colour`, SGR colour sequences)."""
    stripped = COLOUR.sub("", text) if colour else text
    bad = [
        (i, c)
        for i, c in enumerate(stripped)
        if c != "\n"
        and (unicodedata.category(c) in ("Cc", "Cs") or c in BIDI or c in "\u2028\u2029")
    ]
    assert not bad, f"raw control characters {bad[:5]} in:\n{text}"
    plan_lines = [line for line in stripped.split("\n") if line.startswith("Plan:")]
    assert len(plan_lines) == real_plan_lines, plan_lines
    assert not any(line.startswith(FORGED_LOG[:23]) for line in stripped.split("\n"))


def hostile_tree(sandbox: Sandbox) -> None:
    """A File at a path with ESC and CR in its name, one whose content (in an update
    diff and as a new file) carries the forged summary, a Symlink whose target
    does, and a File that fails because its parent (named with ESC) is a file."""
    root = sandbox.root
    (root / "existing.conf").write_text("first\nsecond\nthird\n")
    (root / f"blocker{ERASE}").write_text("a file where a directory is wanted")
    documents = [
        _manifest(
            "File", "evil-path", {"path": str(root / f"evil{ERASE}\r.conf"), "content": "x\n"}
        ),
        _manifest(
            "File",
            "content",
            {"path": str(root / "existing.conf"), "content": f"first\nsec\rond{HOSTILE}\nthird\n"},
        ),
        _manifest("File", "new-content", {"path": str(root / "new.conf"), "content": HOSTILE}),
        _manifest("Symlink", "link", {"path": str(root / "link"), "target": HOSTILE}),
        _manifest(
            "File",
            "blocked",
            {"path": str(root / f"blocker{ERASE}" / "child\r.conf"), "content": "x"},
        ),
    ]
    sandbox.write("hostile.yaml", yaml.safe_dump_all(documents))


def test_plan_apply_and_events_show_hostile_values_escaped(sandbox: Sandbox) -> None:
    hostile_tree(sandbox)
    plan = sandbox.run("plan")
    assert plan.returncode in (1, 2), plan.stderr
    assert_clean(plan.stdout, real_plan_lines=1)
    assert_clean(plan.stderr)
    assert plan.stdout.rstrip("\n").split("\n")[-1].startswith("Plan: ")
    assert "evil\\x1b[2K\\x1b[1A\\r.conf" in plan.stdout  # the path, shown escaped
    assert "sec\\rond\\r" in plan.stdout  # the CR inside a diff line cannot rewrite it
    assert "\\u202e" in plan.stdout and "\\x9b2J" in plan.stdout

    plan_json = sandbox.run("plan", "--json")
    assert_clean(plan_json.stdout)
    changes = {c["id"]: c for c in json.loads(plan_json.stdout)["changes"]}
    assert changes["Symlink/link"]["describe"].endswith(HOSTILE)  # JSON keeps values whole

    apply = sandbox.run("apply")
    assert apply.returncode == 1  # File/blocked fails
    assert_clean(apply.stdout)
    assert_clean(apply.stderr)
    assert "failed " in apply.stdout and "blocker\\x1b[2K\\x1b[1A" in apply.stdout
    assert os.readlink(sandbox.root / "link") == HOSTILE  # the value itself is kept intact

    events = sandbox.run("events", "--state-dir", str(sandbox.state))
    assert events.returncode == 0, events.stderr
    assert_clean(events.stdout)
    assert "File/blocked" in events.stdout


def test_coloured_plan_on_a_terminal_has_only_its_own_escape_sequences(sandbox: Sandbox) -> None:
    hostile_tree(sandbox)
    argv = [sys.executable, "-m", "reconciler", "plan", str(sandbox.config)]
    argv += ["--root", str(sandbox.root), "--state-dir", str(sandbox.state)]
    env = {
        k: v for k, v in os.environ.items() if k != "NO_COLOR" and not k.startswith("RECONCILER_")
    }
    text = _run_on_pty(argv, env)
    assert COLOUR.search(text), "a terminal gets colours: the test would prove nothing"
    # a pty turns LF into CRLF: those CRs are the terminal's, not the output's
    assert_clean(text.replace("\r\n", "\n"), colour=True, real_plan_lines=1)
    assert "\\x1b[2K" in text


def _run_on_pty(argv: list[str], env: dict[str, str]) -> str:
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError as exc:  # EIO: every writer closed its end
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        process.wait(timeout=60)
    return b"".join(chunks).decode("utf-8")


def test_validate_errors_name_hostile_files_fields_and_values_escaped(sandbox: Sandbox) -> None:
    sandbox.write(f"evil{ERASE}\r.yaml", "a: [\n")
    documents = [
        _manifest("Fi\x1b[31mle", "a", {}),
        _manifest("File", "na\x1bme\r", {"path": str(sandbox.root / "x"), "content": "x"}),
        _manifest(
            "File", "b", {"path": str(sandbox.root / "y"), "content": "x", "pa\x1bth\u202e": 1}
        ),
        _manifest("File", "c", {"path": str(sandbox.root / "z"), "content": "x", "mode": "07\r55"}),
    ]
    sandbox.write(f"m{HOSTILE}.yaml", yaml.safe_dump_all(documents))
    result = sandbox.run("validate", check=1)
    assert_clean(result.stdout)
    assert_clean(result.stderr)
    lines = result.stderr.rstrip("\n").split("\n")
    assert lines[0].startswith("error: ") and lines[0].endswith("5 errors:"), lines
    assert len(lines) == 6, lines  # one line per error, whatever the values carry
    assert any(line.startswith("  evil\\x1b[2K\\x1b[1A\\r.yaml:") for line in lines)
    assert any("pa\\x1bth\\u202e" in line for line in lines)


def test_cli_error_lines_are_escaped(tmp_path: Path) -> None:
    state = tmp_path / f"state{ERASE}\r"
    result = run_cli("events", "--state-dir", str(state))
    assert result.returncode == 1
    assert_clean(result.stderr)
    assert result.stderr.startswith("error: state directory ") and "\\x1b[2K" in result.stderr
    result = run_cli("events", "--state-dir", str(tmp_path), "--resource", f"x{HOSTILE}")
    assert result.returncode == 1
    assert_clean(result.stderr)
    assert len(result.stderr.rstrip("\n").split("\n")) == 1


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_daemon_log_and_status_escape_hostile_values(
    tmp_path: Path, daemons: Daemons, log_format: str
) -> None:
    root, config = tmp_path / "root", tmp_path / "config"
    root.mkdir()
    config.mkdir()
    (root / f"blocker{ERASE}").write_text("a file where a directory is wanted")
    documents = [
        _manifest("Symlink", "link", {"path": str(root / "link"), "target": HOSTILE + FORGED_LOG}),
        _manifest(
            "File",
            "blocked",
            {"path": str(root / f"blocker{ERASE}" / f"child{HOSTILE}"), "content": "x"},
        ),
    ]
    (config / "hostile.yaml").write_text(yaml.safe_dump_all(documents))
    daemon = daemons.start(config, root=root, args=["--log-format", log_format], ready=False)
    daemon.wait_state("File/blocked", "Failed")
    # a rejected revision: its errors (hostile file name and field) are logged
    (config / f"bad{HOSTILE}{FORGED_LOG}.yaml").write_text(
        yaml.safe_dump(_manifest("File", "d", {"path": str(root / "d"), f"x{HOSTILE}": 1}))
    )
    daemon.wait_until(
        lambda: "rejected" in (daemon.status().get("lastError") or ""), "the revision rejected"
    )

    status = run_cli("status", "--url", daemon.url)
    assert status.returncode == 0, status.stderr
    assert_clean(status.stdout)
    assert "File/blocked" in status.stdout and "\\x1b[2K" in status.stdout

    events = run_cli("events", "--url", daemon.url)
    assert events.returncode == 0, events.stderr
    assert_clean(events.stdout)

    log = daemon.logs()
    assert_clean(log)
    assert "rejected" in log
    if log_format == "json":
        records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert any(HOSTILE in r["msg"] for r in records)  # lossless once decoded
    else:
        stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")
        for line in log.splitlines():
            # every line is a record or an indented continuation of one (a rejected
            # revision's errors); a value cannot start a line of its own
            assert stamp.match(line) or line.startswith("  "), line
        assert "all good" in log  # the forged record is there, inside a real one
