"""The README's `make run HOOKS=1` and `make demo`, run as a newcomer would, through a
real `make`: the daemon follows a real local git repository it prepared, a GitLab
webhook and `POST /api/v1/sync` bring commits in (polling is hourly, so nothing
else could), a hand edit under `drift: warn` stays Drifted; then `make demo`,
after the daemon stopped, explains in words what the walkthrough left behind.

The demo tree is this checkout's configs/demo with its sandbox path
(/tmp/reconciler-demo) rewritten into the test's directory, so the test never
touches a real demo a person runs. `-o VENV/.installed` keeps make from
reinstalling the package.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.gitservers import GIT_IDENTITY, free_port

pytestmark = pytest.mark.timeout(60)

CHECKOUT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
_WAIT = 15.0


def _demo_tree(tmp: Path) -> Path:
    """configs/demo with its absolute sandbox paths moved under `tmp`/root."""
    tree = tmp / "cfg"
    shutil.copytree(CHECKOUT / "configs/demo", tree)
    for path in tree.rglob("*"):
        if path.is_file():
            text = path.read_text("utf-8")
            if "/tmp/reconciler-demo" in text:
                path.write_text(text.replace("/tmp/reconciler-demo", str(tmp / "root")), "utf-8")
    return tree


def _make_env() -> dict[str, str]:
    # a make running this test (make test) must not pass its flags or level down
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return {**env, **GIT_IDENTITY}


def _make(tmp: Path, *args: str, port: int = 0) -> list[str]:
    variables = [
        f"VENV={VENV}",
        f"DEMO_CONFIG={tmp / 'cfg'}",
        f"DEMO_ROOT={tmp / 'root'}",
        f"DEMO_REPO={tmp / 'repo'}",
        f"DEMO_LISTEN=127.0.0.1:{port or 9108}",
    ]
    return ["make", "--no-print-directory", "-o", f"{VENV}/.installed", *args, *variables]


def _start(tmp: Path, out: IO[str], *args: str, port: int) -> subprocess.Popen[str]:
    """`make ARGS` in its own session (Ctrl-C in a terminal reaches make and the
    daemon alike), its output to `out`."""
    return subprocess.Popen(
        _make(tmp, *args, port=port),
        cwd=CHECKOUT,
        env=_make_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait(what: str, check: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + _WAIT
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"make run exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {_WAIT} s")
        time.sleep(0.05)


def _body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")  # /readyz answers text


def _request(
    url: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, _body(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _body(exc.read())
    except OSError:
        return 0, None


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    _demo_tree(tmp_path)
    port = free_port()
    log = (tmp_path / "make-run.log").open("w")
    proc = _start(tmp_path, log, "run", "HOOKS=1", port=port)
    try:
        yield proc, port
    finally:
        _kill(proc)
        log.close()


def test_make_run_hooks_then_make_demo_explains_what_was_left(
    tmp_path: Path, make_run: tuple[subprocess.Popen[str], int]
) -> None:
    proc, port = make_run
    api = f"http://127.0.0.1:{port}"
    repo, root = tmp_path / "repo", tmp_path / "root"
    config = root / "srv/app/config.ini"
    _wait("converged demo", lambda: _request(f"{api}/readyz")[0] == 200, proc)
    assert (repo / ".git").is_dir()  # make prepared the repository from the demo tree
    hooks = root / ".hooks"
    assert {p.name: p.stat().st_mode & 0o777 for p in hooks.iterdir()} == {
        "webhook-secret": 0o600,
        "api-token": 0o600,
    }
    secret = (hooks / "webhook-secret").read_text().strip()
    token = (hooks / "api-token").read_text().strip()

    def commit(old: str, new: str, message: str) -> None:
        template = repo / "templates/config.ini.j2"
        template.write_text(template.read_text().replace(old, new))
        subprocess.run(["git", "-C", str(repo), "commit", "-qam", message], check=True)

    # a commit, then the README's webhook: GitLab's token header
    commit("workers = ", "timeout = 30\nworkers = ", "config: add a timeout")
    status, body = _request(
        f"{api}/hooks/gitlab",
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret},
        b"{}",
    )
    assert (status, body) == (202, {"accepted": True})
    _wait("the hook's commit applied", lambda: "timeout = 30" in config.read_text(), proc)

    # another commit, then the sync API with the token (and without: refused)
    commit("timeout = 30", "timeout = 45", "config: a longer timeout")
    assert _request(f"{api}/api/v1/sync", body=b"")[0] == 401
    status, body = _request(f"{api}/api/v1/sync", {"Authorization": f"Bearer {token}"}, b"")
    assert (status, body) == (202, {"accepted": True})
    _wait("the synced commit applied", lambda: "timeout = 45" in config.read_text(), proc)

    # the walkthrough's drift under policy warn: reported, left alone. The edit is
    # repeated while waiting: one made while the daemon restarts its watches after
    # the revision above is only found at the resync (docs/daemon.md, Watch)
    def drifted() -> bool:
        (root / "srv/reports").chmod(0o777)
        found = _request(f"{api}/api/v1/resources/Directory/reports")[1]
        return bool(found["state"] == "Drifted")

    _wait("Directory/reports Drifted", drifted, proc)

    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    proc.wait(timeout=_WAIT)
    log = (tmp_path / "make-run.log").read_text()
    assert "webhook gitlab push hook: requesting a sync" in log
    assert "--interval 1h" in log  # so the commits above came by hook and sync

    started = time.monotonic()
    demo = subprocess.run(
        _make(tmp_path, "demo"),
        cwd=CHECKOUT,
        env=_make_env(),
        capture_output=True,
        text=True,
        timeout=_WAIT,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = " ".join(demo.stdout.split())  # paragraphs are wrapped
    # the commits the daemon applied: configs/demo differs, and why
    assert "File/app-config: " in out and '"timeout = 45" on the system' in out
    assert f"the daemon applied the demo repository {repo} with your commits" in out
    # the drift under warn: what differs, why it stays, how to heal it
    assert (
        f'Directory/reports was changed outside reconciler (mode is "0777" on the system, '
        f'"0750" in {tmp_path / "cfg"}). Its policy is `drift: warn`'
    ) in out
    assert "To heal it, undo the change by hand, or set `policy: {drift: heal}`" in out
    # the commands a person would type, their output, and what is left
    assert "Apply complete: " in out and "1 drifted" in out
    assert "Left as found (policy drift: warn): Directory/reports." in out
    assert (root / "srv/reports").stat().st_mode & 0o777 == 0o777
    assert "timeout" not in config.read_text()  # configs/demo's version, as announced
    assert time.monotonic() - started < 10


def test_make_demo_on_a_fresh_sandbox_and_the_hooks_variable(tmp_path: Path) -> None:
    _demo_tree(tmp_path)
    env = _make_env()
    demo = subprocess.run(
        _make(tmp_path, "demo"), cwd=CHECKOUT, env=env, capture_output=True, text=True, check=False
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "exists under" in demo.stdout and "yet: apply creates it." in demo.stdout
    assert "Nothing left to do: the system under" in demo.stdout

    # a heal-policy edit: healed by the demo, and said so
    motd = tmp_path / "root/srv/app/motd.txt"
    motd.write_text("edited by hand\n")
    demo = subprocess.run(
        _make(tmp_path, "demo"), cwd=CHECKOUT, env=env, capture_output=True, text=True, check=False
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = " ".join(demo.stdout.split())
    assert "File/motd was changed outside reconciler (content differs:" in out
    assert "Its policy heals drift, so apply puts it back" in out
    assert motd.read_text().startswith("Welcome to the reconciler demo.")

    # the one variable: 1 or nothing, anything else is an error naming it
    wrong = subprocess.run(
        _make(tmp_path, "-n", "run", "HOOKS=yes"),
        cwd=CHECKOUT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode != 0
    assert "HOOKS=1 turns the webhooks and the sync API on; found HOOKS=yes" in wrong.stderr
    plain = subprocess.run(
        _make(tmp_path, "-n", "run"),
        cwd=CHECKOUT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--interval 5s" in plain.stdout and "--webhook-secret-file" not in plain.stdout


def test_make_run_notify_sends_to_make_receiver(tmp_path: Path) -> None:
    """The README's `make receiver` and `make run NOTIFY=1`: one setting turns the
    notifications on, and the receiver prints the demo's first revision, applied,
    its signature checked."""
    _demo_tree(tmp_path)
    port, receiver_port = free_port(), free_port()
    receiver_at = f"DEMO_RECEIVER=127.0.0.1:{receiver_port}"
    out = (tmp_path / "receiver.out").open("w")
    log = (tmp_path / "make-run.log").open("w")
    procs = [_start(tmp_path, out, "receiver", receiver_at, port=port)]
    try:
        _wait(
            "the receiver",
            lambda: "secret_file: secret" in _read(tmp_path / "root/.notify/notifications.yaml"),
            procs[0],
        )
        procs.append(_start(tmp_path, log, "run", "NOTIFY=1", receiver_at, port=port))
        _wait(
            "the applied revision at the receiver",
            lambda: '"revision-applied"' in _read(tmp_path / "receiver.out"),
            procs[1],
        )
        printed = _read(tmp_path / "receiver.out").splitlines()
        line = json.loads(next(x for x in printed if "revision-applied" in x))
        assert line["kind"] == "webhook" and line["payload"]["fields"]["created"]
        notify = tmp_path / "root/.notify"
        assert (notify / "secret").stat().st_mode & 0o777 == 0o600
    finally:
        for proc in procs:
            _kill(proc)
        out.close()
        log.close()
    assert "--notifications" in (tmp_path / "make-run.log").read_text()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
