"""Templates as an attacker writes them, against the real CLI and the real daemon
(issue 8, parts 2 and 3).

- Every known Jinja2 sandbox-escape payload (PAYLOADS of tests/unit/test_templates.py)
  in one revision: `validate`, `plan` and `apply` run no code (a sentinel file
  is never created), name each template's `file:line`, and apply nothing; the
  daemon rejects the revision whole and keeps enforcing the last good one.
- Templates past a limit (time, output, call depth, a value too big, a template
  file too big): the daemon rejects each revision with `file:line` errors, stays
  healthy, and keeps the last good revision.
- A secret carried into an error by every transformation of LEAKS (reverse,
  upper, slices, join, format, `~`, include of a derived name, ...): no piece of
  it (4+ characters of it or of its reverse, in any case) appears in the CLI's
  stdout or stderr, the daemon's log, /api/v1/status, /api/v1/resources,
  /api/v1/events or the bytes of the state directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Sandbox
from tests.e2e.daemon_harness import DaemonProcess, Daemons, doc, docs, read_text
from tests.gitservers import GitDaemon, WorkClone
from tests.unit.test_templates import LEAKS, PAYLOADS, SECRET, SENTINEL, leaked

ENV = "TEMPLATE_ATTACK_SECRET"
SECRET_REF = {"valueFrom": {"env": ENV}}
SECRET_VARS = {"s": SECRET_REF, "db": {"password": SECRET_REF}, "keys": [SECRET_REF], "x": "plain"}


def template_doc(name: str, root: Path, template: str, variables: dict[str, object]) -> str:
    return doc(
        "File", name, {"path": str(root / f"{name}.txt"), "template": template, "vars": variables}
    )


def write_payloads(config: Path, root: Path, sentinel: Path) -> list[str]:
    """One File per payload, each with its own template; the names, in order."""
    names, documents = [], []
    for i, payload in enumerate(PAYLOADS.values()):
        name = f"p{i:02d}"
        (config / "attacks").mkdir(exist_ok=True)
        text = "# an innocent first line\n" + payload.replace(SENTINEL, str(sentinel)) + "\n"
        (config / "attacks" / f"{name}.j2").write_text(text)
        documents.append(template_doc(name, root, f"attacks/{name}.j2", {"x": "text"}))
        names.append(name)
    (config / "attacks.yaml").write_text(docs(*documents))
    return names


def write_leaks(config: Path, root: Path) -> list[str]:
    names, documents = [], []
    (config / "leaks").mkdir(exist_ok=True)
    for i, template in enumerate(LEAKS.values()):
        name = f"leak{i:02d}"
        (config / "leaks" / f"{name}.j2").write_text("a first line\n" + template + "\n")
        documents.append(template_doc(name, root, f"leaks/{name}.j2", SECRET_VARS))
        names.append(name)
    (config / "leaks.yaml").write_text(docs(*documents))
    return names


def write_good(config: Path, root: Path, version: str) -> None:
    (config / "good.j2").write_text("version = {{ version }}\npassword = {{ s }}\n")
    variables = {"version": version, "s": SECRET_REF}
    (config / "good.yaml").write_text(template_doc("good", root, "good.j2", variables))


def good_text(version: str) -> str:
    return f"version = {version}\npassword = {SECRET}\n"


def secret_env() -> dict[str, str]:
    return {**os.environ, ENV: SECRET}


# --- the CLI ----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_escape_payloads_run_no_code_in_validate_plan_or_apply(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sentinel = tmp_path / "pwned"
    names = write_payloads(sandbox.config, sandbox.root, sentinel)
    write_good(sandbox.config, sandbox.root, "1")
    for command in ("validate", "plan", "apply"):
        result = sandbox.run(command, check=1, env=secret_env(), cwd=tmp_path)
        output = result.stdout + result.stderr
        assert not sentinel.exists(), f"{command} ran a payload's code"
        for name in names:
            assert f"spec.template: attacks/{name}.j2:2: " in output, (command, name, output)
        assert leaked(SECRET, output) == []
    assert list(sandbox.root.iterdir()) == []  # the revision is rejected whole
    assert not (tmp_path / "pwned").exists()


@pytest.mark.timeout(120)
def test_no_piece_of_a_secret_reaches_the_cli_output_or_the_state(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    write_good(sandbox.config, sandbox.root, "1")
    sandbox.run("apply", check=0, env=secret_env())
    assert read_text(sandbox.root / "good.txt") == good_text("1")

    names = write_leaks(sandbox.config, sandbox.root)
    write_good(sandbox.config, sandbox.root, "2")
    outputs = {}
    for command in ("validate", "plan", "apply"):
        for extra in ((), ("--json",)) if command == "plan" else ((),):
            result = sandbox.run(command, *extra, check=1, env=secret_env())
            outputs[" ".join((command, *extra))] = result.stdout + result.stderr
    for command, output in outputs.items():
        for name in names:
            assert f"leaks/{name}.j2:2: " in output, (command, name, output)
        assert leaked(SECRET, output) == [], f"{command}: {output}"
    for path in sandbox.state.rglob("*"):
        if path.is_file():
            assert leaked(SECRET, path.read_bytes().decode("latin-1")) == [], path
    assert read_text(sandbox.root / "good.txt") == good_text("1")  # nothing applied


# --- the daemon -------------------------------------------------------------------


def publish(work: WorkClone, message: str, daemon: DaemonProcess | None = None) -> str:
    """Commit everything in the work tree, push, and tell the daemon."""
    sha = work.commit(message)
    work.push()
    if daemon is not None:
        assert daemon.sync().status == 202
    return sha


def wait_rejected(daemon: DaemonProcess, sha: str, expected: list[str]) -> dict[str, Any]:
    """The rejected revision `sha`; its errors must name every one of `expected`."""
    found: dict[str, Any] = daemon.wait_until(
        lambda: (r := daemon.status()["rejected"]) and r["revision"] == sha and r,
        f"commit {sha[:8]} to be rejected",
        timeout=60,
    )
    text = json.dumps(found["errors"])
    missing = [e for e in expected if e not in text]
    assert not missing, f"not in the errors: {missing}\n{text}"
    return found


def api_texts(daemon: DaemonProcess) -> dict[str, str]:
    texts = {
        "/api/v1/status": json.dumps(daemon.status()),
        "/api/v1/resources": json.dumps(daemon.resources()),
        "/api/v1/events": json.dumps(daemon.events(limit=1000)),
    }
    for path in daemon.state_dir.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    return texts


@pytest.mark.timeout(180)
def test_the_daemon_rejects_escapes_and_limits_and_keeps_the_last_good_revision(
    tmp_path: Path, root: Path, daemons: Daemons, git_server: GitDaemon, work: WorkClone
) -> None:
    config = work.path
    sentinel = tmp_path / "pwned"
    write_good(config, root, "1")
    good = publish(work, "good")
    daemon = daemons.start(git_server.url(), root=root, env={ENV: SECRET}, secrets=[SECRET])
    daemon.wait_revision(good)
    daemon.wait_file(root / "good.txt", good_text("1"))

    names = write_payloads(config, root, sentinel)
    attacks = publish(work, "escape payloads", daemon)
    wait_rejected(daemon, attacks, [f"attacks/{n}.j2:2: " for n in names])
    assert not sentinel.exists()
    assert daemon.status()["revision"]["id"] == good
    for name in names:
        (config / "attacks" / f"{name}.j2").unlink()
    (config / "attacks.yaml").unlink()

    bombs = {
        "slow": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        "deep": "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
        "big-value": "{{ ('x' * 1000000)|replace('', '0123456789') }}",
        "big-include": "{% include 'huge.txt' %}",
    }
    (config / "huge.txt").write_text("x" * (1024 * 1024 + 1))
    for name, body in bombs.items():
        (config / f"{name}.j2").write_text("ok\n" + body + "\n")
    (config / "bombs.yaml").write_text(docs(*(template_doc(n, root, f"{n}.j2", {}) for n in bombs)))
    limits = publish(work, "templates past their limits", daemon)
    rejected = wait_rejected(
        daemon,
        limits,
        [
            "slow.j2:2: rendering took longer than the limit of 5 s",
            "output.j2:2: the output is over the limit of 8388608 bytes",
            "deep.j2:2: calls nested deeper than the limit of 100",
            "big-value.j2:2: a value the template computes is over the limit",
            "big-include.j2:2: huge.txt is over the template size limit of 1048576 bytes",
        ],
    )
    assert len(rejected["errors"]) == len(bombs)
    assert daemon.request("GET", "/healthz").status == 200
    assert daemon.status()["revision"]["id"] == good
    assert read_text(root / "good.txt") == good_text("1")

    (config / "bombs.yaml").unlink()
    write_good(config, root, "2")
    fixed = publish(work, "good again", daemon)
    daemon.wait_revision(fixed, timeout=30)
    daemon.wait_file(root / "good.txt", good_text("2"))
    assert daemon.status()["rejected"] is None
    texts = api_texts(daemon)
    daemon.stop()
    texts["daemon log"] = daemon.logs()
    assert not sentinel.exists()
    for name, text in texts.items():
        assert leaked(SECRET, text) == [], f"a piece of the secret is in {name}"


@pytest.mark.timeout(180)
def test_no_piece_of_a_secret_reaches_the_daemon_log_api_or_state(
    root: Path, daemons: Daemons, git_server: GitDaemon, work: WorkClone
) -> None:
    config = work.path
    write_good(config, root, "1")
    good = publish(work, "good")
    daemon = daemons.start(
        git_server.url(),
        root=root,
        env={ENV: SECRET},
        secrets=[SECRET],
        args=["--log-level", "debug"],
    )
    daemon.wait_revision(good)
    daemon.wait_file(root / "good.txt", good_text("1"))

    names = write_leaks(config, root)
    leaky = publish(work, "templates that would leak the secret", daemon)
    rejected = wait_rejected(daemon, leaky, [f"leaks/{n}.j2:2: " for n in names])
    assert len(rejected["errors"]) == len(LEAKS)
    assert read_text(root / "good.txt") == good_text("1")
    texts = api_texts(daemon)
    daemon.stop()
    texts["daemon log"] = daemon.logs()
    daemon.assert_no_secrets()
    for name, text in texts.items():
        assert leaked(SECRET, text) == [], f"a piece of the secret is in {name}"
    assert SECRET in (read_text(root / "good.txt") or "")  # it reached its target
