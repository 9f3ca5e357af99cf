"""Bounded input and a cache that cannot run code, through the real CLI and the
real daemon.

An alias bomb (a 1 MB string behind thousands of aliases: few nodes, gigabytes
once a spec is serialised) used to abort `validate`, `plan`, `apply` and the
daemon with exit 134, and the daemon again after every restart. Every process
here runs under a 2 GiB address-space limit, so a regression fails the test
instead of taking the machine down. A pickle planted in the state directory's
cache used to run code even through a read-only `plan`.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from reconciler.cache import FORMAT as CACHE_FORMAT
from tests.conftest import Sandbox, doc, docs
from tests.e2e.daemon_harness import Daemons, file_doc, read_text
from tests.gitservers import GitDaemon, WorkClone

MEMORY = 2 * 1024 * 1024 * 1024
"""RLIMIT_AS of every process under test: far above a real run, far below a bomb."""
MiB = 1024 * 1024


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def bomb(root: Path, *, levels: int = 2, fanout: int = 400) -> str:
    """A File whose template vars hold 1 MiB behind `fanout` aliases per level: under
    the node limit (160,000 nodes), 160 GiB once serialised."""
    lines = [f'    s0: &s0 "{"x" * MiB}"']
    for level in range(1, levels + 1):
        items = ", ".join([f"*s{level - 1}"] * fanout)
        lines.append(f"    s{level}: &s{level} [{items}]")
    return (
        "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: bomb}\nspec:\n"
        f"  path: {root}/bomb.conf\n  template: t.j2\n  vars:\n" + "\n".join(lines) + "\n"
    )


def deep(root: Path, depth: int = 900) -> str:
    return (
        "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: deep}\nspec:\n"
        f"  path: {root}/deep.conf\n  template: t.j2\n  vars:\n"
        f"    x: {'[' * depth}{']' * depth}\n"
    )


GOOD = "good.yaml"


def good(sandbox: Sandbox, content: str = "v1\n") -> None:
    sandbox.write(
        GOOD, doc("File", "app", {"path": f"{sandbox.root}/app.conf", "content": content})
    )


# --- the CLI -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("bomb", bomb, ("bomb.yaml:1:", "over 16777216 bytes of text (max_expanded_bytes)")),
        ("deep", deep, ("deep.yaml:8:", "nested deeper than 100 levels (max_depth)")),
    ],
)
def test_validate_plan_and_apply_reject_the_revision_with_its_line(
    sandbox: Sandbox, name: str, text: object, expected: tuple[str, ...]
) -> None:
    assert callable(text)
    sandbox.write("t.j2", "hi\n")
    good(sandbox)
    sandbox.run("apply", check=0, preexec_fn=limited)
    good(sandbox, "v2\n")  # a valid change beside the bad file: nothing of it applies
    sandbox.write(f"{name}.yaml", text(sandbox.root))
    for command in ("validate", "plan", "apply"):
        result = sandbox.run(command, check=1, preexec_fn=limited)
        for part in expected:
            assert part in result.stderr, (command, result.stderr)
        assert "RecursionError" not in result.stderr and "internal error" not in result.stderr
    assert read_text(sandbox.root / "app.conf") == "v1\n"
    assert not (sandbox.root / f"{name}.conf").exists()


def test_a_source_over_the_file_limit_is_named_with_the_limit(sandbox: Sandbox) -> None:
    big = sandbox.config / "files" / "big.txt"
    big.parent.mkdir(parents=True)
    big.write_bytes(b"y" * (8 * MiB + 1))
    spec = {"path": f"{sandbox.root}/big.conf", "source": "files/big.txt"}
    sandbox.write("a.yaml", doc("File", "big", spec))
    result = sandbox.run("validate", check=1, preexec_fn=limited)
    assert (
        f"files/big.txt: file is {8 * MiB + 1} bytes, over the limit of {8 * MiB} "
        "(max_file_bytes)" in result.stderr
    ), result.stderr


def test_one_source_in_many_specs_cannot_exhaust_memory(sandbox: Sandbox) -> None:
    # an 8 MiB source is within the file limit; 40 Files of it are 320 MiB of specs
    (sandbox.config / "big.txt").write_bytes(b"y" * (8 * MiB - 1))
    files = [
        doc("File", f"f{i}", {"path": f"{sandbox.root}/f{i}", "source": "big.txt"})
        for i in range(40)
    ]
    sandbox.write("a.yaml", docs(*files))
    result = sandbox.run("plan", check=1, preexec_fn=limited)
    assert "a.yaml:" in result.stderr
    assert "the specs of this revision are over 268435456 bytes (max_spec_bytes)" in result.stderr


# --- the cache ---------------------------------------------------------------------


class Evil:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.sentinel}",))


def test_a_pickle_planted_in_the_cache_never_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    good(sandbox)
    sandbox.run("apply", check=0)
    cache = sandbox.state / "cache"
    [entry] = [p for p in cache.iterdir() if not p.name.endswith(".key")]
    key = entry.name.split(".")[0]  # the cache key of this tree, whatever the format
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps(Evil(sentinel))
    for name in (f"{key}.entry", f"{key}.pickle"):  # the entry's place, and the old one
        (cache / name).write_bytes(payload)

    shown = sandbox.run("plan", check=0)
    assert not sentinel.exists()
    assert "No changes" in shown.stdout or "no changes" in shown.stdout.lower(), shown.stdout
    warnings = [line for line in shown.stderr.splitlines() if "cache entry" in line]
    assert len(warnings) == 1 and "ignored" in warnings[0], shown.stderr

    applied = sandbox.run("apply", check=0)
    assert not sentinel.exists()
    assert len([line for line in applied.stderr.splitlines() if "cache entry" in line]) == 1
    assert not (cache / f"{key}.pickle").exists()  # replaced by an authentic entry
    again = sandbox.run("plan", check=0)
    assert "cache entry" not in again.stderr and not sentinel.exists()


# --- the daemon --------------------------------------------------------------------


def push(work: WorkClone, message: str, files: Mapping[str, str | None]) -> str:
    sha = work.commit(message, files)
    work.push()
    return sha


def limited_argv(argv: list[str]) -> list[str]:
    """`argv` (`python -m reconciler run ...`) under the address-space limit."""
    start = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY}, {MEMORY})); "
        "sys.argv = ['reconciler', *sys.argv[1:]]; "
        "runpy.run_module('reconciler', run_name='__main__', alter_sys=True)"
    )
    assert argv[1:3] == ["-m", "reconciler"]
    return [sys.executable, "-c", start, *argv[3:]]


def test_the_daemon_rejects_a_bomb_keeps_the_last_good_revision_and_survives_restarts(
    git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons
) -> None:
    app = root / "app.conf"
    sha1 = push(work, "good", {"app.yaml": file_doc("app", app, "a1\n"), "t.j2": "hi\n"})
    daemon = daemons.make(git_server.url(), root=root)
    daemon.argv = limited_argv(daemon.argv)
    daemon.start()
    daemon.wait_healthy()
    daemon.wait_revision(sha1)

    bad = push(
        work,
        "alias bomb",
        {"app.yaml": file_doc("app", app, "a2\n"), "bomb.yaml": bomb(root)},
    )
    assert daemon.sync().status == 202
    status = daemon.wait_until(
        lambda: (s := daemon.status())["rejected"] and s["rejected"]["revision"] == bad and s,
        "the alias bomb to be rejected",
        timeout=30,
    )
    [error] = status["rejected"]["errors"]
    assert error.startswith("bomb.yaml:1: ") and "(max_expanded_bytes)" in error, error
    assert daemon.running() and status["revision"]["id"] == sha1
    assert read_text(app) == "a1\n" and not (root / "bomb.conf").exists()
    daemon.settle()
    app.write_text("by hand\n")
    daemon.wait_file(app, "a1\n")  # the last good revision is still enforced

    for _ in range(2):  # a restart reads the same head again: still no abort
        daemon.stop()
        daemon.start()
        daemon.wait_healthy()
        status = daemon.wait_until(
            lambda: (s := daemon.status())["rejected"] and s["rejected"]["revision"] == bad and s,
            "the alias bomb to be rejected again after a restart",
            timeout=30,
        )
        assert daemon.running(), daemon.log_tail()
        assert "(max_expanded_bytes)" in status["rejected"]["errors"][0]
        assert read_text(app) == "a1\n"
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert "Traceback" not in daemon.logs() and "MemoryError" not in daemon.logs()


def test_the_daemon_never_runs_a_planted_pickle_and_says_so_once(
    config: Path, root: Path, daemons: Daemons, tmp_path: Path
) -> None:
    app = root / "app.conf"
    (config / "app.yaml").write_text(file_doc("app", app, "a1\n"))
    daemon = daemons.start(config, root=root)
    daemon.wait_file(app, "a1\n")
    daemon.stop()
    cache = daemon.state_dir / "cache"
    [entry] = cache.glob("*.entry")
    sentinel = tmp_path / "pwned"
    entry.write_bytes(pickle.dumps(Evil(sentinel)))

    daemon.start()
    daemon.wait_healthy()
    daemon.wait_ready()
    daemon.settle()
    app.write_text("by hand\n")
    daemon.wait_file(app, "a1\n")  # parsed instead, and enforced
    assert not sentinel.exists()
    warnings = [line for line in daemon.logs().splitlines() if "cache entry" in line]
    assert len(warnings) == 1 and str(entry) in warnings[0], warnings
    daemon.stop()
    assert not sentinel.exists()
    assert entry.read_bytes().startswith(CACHE_FORMAT + b" ")  # written again
