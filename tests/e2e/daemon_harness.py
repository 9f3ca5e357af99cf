"""Drive the real `reconciler run` process in end-to-end tests.

`DaemonProcess` is one daemon: started with `sys.executable -m reconciler run`,
its stdout and stderr captured to a log file, ready once `/healthz` answers. It
reads the HTTP API as JSON, waits (by polling against a deadline) for conditions
on the API or the file system, sends signals and waits for the exit code, and
checks that no secret ever reached its log. `Daemons` starts them for a test,
each with its own port, state directory and secret files, and kills whatever is
still running at teardown.

Nothing here reaches into the running daemon: everything goes through its
command line, its HTTP API, its log and the directories it manages (the one
import from it is a documented constant, QUIET_AFTER_APPLY, for `settle`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import yaml

from reconciler.daemon import QUIET_AFTER_APPLY
from tests.gitservers import free_port

T = TypeVar("T")

START_TIMEOUT = 20.0
"""Seconds for a daemon to answer /healthz (imports and the store take ~1.5 s)."""
WAIT_TIMEOUT = 15.0
"""Default deadline of `wait_until`: generous, since polling returns as soon as it can."""
POLL = 0.02

API_TOKEN = "api-tok-5d1e0b9c44a7-not-a-real-secret"
WEBHOOK_SECRET = "hook-secret-8c2f7a0e19d3-not-a-real-secret"
LOG_TAIL = 4000

SECRETS_ANYWHERE = {"RECONCILER_SECRET_DIRS": "/", "RECONCILER_SECRET_ENV": "*"}
"""Tests keep secrets in temporary files and variables of any name, so the
processes they start may read any (the default allow-list is tested by
tests/e2e/test_secret_sources.py)."""


# manifests


def doc(
    kind: str,
    name: str,
    spec: Mapping[str, Any],
    policy: Mapping[str, Any] | None = None,
) -> str:
    """One manifest document."""
    data: dict[str, Any] = {
        "apiVersion": "reconciler/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": dict(spec),
    }
    if policy is not None:
        data["policy"] = dict(policy)
    return yaml.safe_dump(data, sort_keys=False)


def file_doc(
    name: str, path: Path, content: str, policy: Mapping[str, Any] | None = None, **spec: Any
) -> str:
    """A `File` manifest document with inline content."""
    return doc("File", name, {"path": str(path), "content": content, **spec}, policy)


def docs(*documents: str) -> str:
    """Several documents in one manifest file."""
    return "---\n".join(documents)


# waiting


class WaitTimeout(AssertionError):
    pass


def wait_until(
    condition: Callable[[], T | Literal[False] | None],
    what: str,
    *,
    timeout: float = WAIT_TIMEOUT,
    interval: float = POLL,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll `condition` until it returns something truthy, and return that; fail
    with `what`, the last value seen and `context()` (a log tail) at the deadline.
    Exceptions of the condition count as "not yet" (a daemon still starting)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = condition()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n--- context ---\n{context()}" if context is not None else ""
            raise WaitTimeout(
                f"timed out after {timeout:g} s waiting for {what}; last: {last!r}{extra}"
            )
        time.sleep(interval)


def assert_stays(
    condition: Callable[[], object],
    what: str,
    *,
    seconds: float,
    interval: float = POLL,
    context: Callable[[], str] | None = None,
) -> None:
    """Check `condition` over a window of `seconds`: for proving that something does
    NOT happen (a rejected webhook that must not trigger a fetch), where no event
    can be awaited."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if not value:
            extra = f"\n--- context ---\n{context()}" if context is not None else ""
            raise AssertionError(f"{what} stopped holding (value {value!r}){extra}")
        if time.monotonic() > deadline:
            return
        time.sleep(interval)


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist (for polling)."""
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def holds(path: Path, content: str | None) -> Callable[[], bool]:
    """A condition: `path` holds `content` (None: `path` does not exist)."""
    return lambda: read_text(path) == content


# signing webhooks


def hmac_signature(secret: str, body: bytes) -> str:
    """`sha256=<hex>`, as GitHub's X-Hub-Signature-256 and the generic hook want it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# the daemon


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class DaemonProcess:
    """One `reconciler run` process and its captured log."""

    argv: list[str]
    port: int
    state_dir: Path
    log_path: Path
    cwd: Path
    secrets: tuple[str, ...] = ()
    api_token: str | None = None
    webhook_secret: str | None = None
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # process

    def start(self) -> None:
        """Start the process (appending to the log) without waiting."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        env.update(SECRETS_ANYWHERE)
        env.update(self.env or {})
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # its own process group, so teardown can take git children with it
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Until /healthz answers 200; fails at once if the process exits."""

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} before it was healthy:\n"
                    f"{self.logs()}"
                )
            return self.request("GET", "/healthz", timeout=1.0).status == 200

        wait_until(healthy, "/healthz to answer 200", timeout=timeout, context=self.log_tail)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None, "daemon not started"
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None, "daemon not started"
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"daemon still running {timeout:g} s after it was asked to stop:\n{self.log_tail()}"
            ) from None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 45.0) -> None:
        """Send `sig` and require a clean exit (code 0). The wait outlasts the
        daemon's own 30 s shutdown timeout: in two loaded CI runs a daemon waited
        it out once after converging (cause not found yet; the daemon then cancels
        and exits 0), which is slow but not wrong."""
        self.send(sig)
        code = self.wait_exit(timeout)
        assert code == 0, f"daemon exited with {code} after {sig.name}:\n{self.log_tail()}"

    def kill(self) -> None:
        """SIGKILL the daemon and anything it started (git), if still running."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    # log

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self) -> str:
        return self.logs()[-LOG_TAIL:]

    def assert_no_secrets(self, *extra: str, texts: Iterable[str] = ()) -> None:
        """No secret (the daemon's own and `extra`) in its log or in `texts`."""
        haystacks = {"daemon log": self.logs()}
        haystacks.update({f"text #{i}": text for i, text in enumerate(texts)})
        for secret in (*self.secrets, *extra):
            for name, text in haystacks.items():
                assert secret not in text, f"secret {secret[:6]}... leaked into the {name}"

    # HTTP

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """One HTTP request; error statuses are returned, not raised."""
        request = urllib.request.Request(
            self.url + path, data=body, method=method, headers=dict(headers or {})
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Response(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, error.read(), dict(error.headers))

    def get(self, path: str) -> Any:
        response = self.request("GET", path)
        assert response.status == 200, f"GET {path}: {response.status} {response.body!r}"
        assert response.headers.get("Content-Type", "").startswith("application/json")
        return response.json()

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/api/v1/status")
        return result

    def resources(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/resources")["resources"]
        return result

    def resource(self, rid: str) -> dict[str, Any] | None:
        response = self.request("GET", f"/api/v1/resources/{rid}")
        if response.status == 404:
            return None
        assert response.status == 200, f"GET resource {rid}: {response.status}"
        result: dict[str, Any] = response.json()
        return result

    def events(self, **filters: str | float | int) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({k: str(v) for k, v in filters.items()})
        result: list[dict[str, Any]] = self.get("/api/v1/events" + (f"?{query}" if query else ""))[
            "events"
        ]
        return result

    def sync(self, token: str | None = None) -> Response:
        """POST /api/v1/sync with the bearer token (default: the daemon's own)."""
        token = self.api_token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.request("POST", "/api/v1/sync", body=b"", headers=headers)

    def hook(self, name: str, body: bytes, headers: Mapping[str, str]) -> Response:
        return self.request(
            "POST",
            f"/hooks/{name}",
            body=body,
            headers={"Content-Type": "application/json", **headers},
        )

    # conditions

    def wait_until(
        self,
        condition: Callable[[], T | Literal[False] | None],
        what: str,
        *,
        timeout: float = WAIT_TIMEOUT,
    ) -> T:
        """`wait_until` that also fails at once when the daemon died, with its log."""

        def check() -> T | Literal[False] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} while waiting for {what}:\n"
                    f"{self.log_tail()}"
                )
            return condition()

        return wait_until(check, what, timeout=timeout, context=self.log_tail)

    def wait_revision(self, sha: str, *, timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
        """Until /api/v1/status says revision `sha` is current; returns the status."""
        return self.wait_until(
            lambda: (s := self.status())["revision"] and s["revision"]["id"] == sha and s,
            f"revision {sha[:12]} to be current",
            timeout=timeout,
        )

    def wait_ready(self, *, timeout: float = WAIT_TIMEOUT) -> None:
        self.wait_until(
            lambda: self.request("GET", "/readyz").status == 200, "/readyz 200", timeout=timeout
        )

    def wait_state(self, rid: str, state: str, *, timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
        """Until resource `rid` is in `state`; returns its JSON."""
        return self.wait_until(
            lambda: (r := self.resource(rid)) is not None and r["state"] == state and r,
            f"{rid} to be {state}",
            timeout=timeout,
        )

    def wait_file(self, path: Path, content: str | None, *, timeout: float = WAIT_TIMEOUT) -> None:
        """Until `path` holds `content` (None: until it does not exist)."""
        self.wait_until(
            holds(path, content),
            f"{path} to hold {content!r}" if content is not None else f"{path} to be gone",
            timeout=timeout,
        )

    def wait_fetch_after(
        self, moment: float, *, ok: bool, timeout: float = WAIT_TIMEOUT
    ) -> dict[str, Any]:
        """Until a fetch started after `moment` (unix time) has ended with `ok`; the
        status. (`lastFetch.at` is set when a fetch starts, `ok` when it ends, so
        `ok` must be one the previous fetch did not already show.)"""

        def fetched() -> dict[str, Any] | None:
            status = self.status()
            fetch = status["lastFetch"]
            done = fetch["at"] is not None and fetch["at"] > moment and fetch["ok"] is ok
            return status if done else None

        return self.wait_until(fetched, f"a fetch after {moment:.3f} with ok={ok}", timeout=timeout)

    def settle(self) -> None:
        """Wait out the window after the last pass in which the daemon takes watch
        events of what it just wrote as its own (QUIET_AFTER_APPLY), and let its
        watches be set up: a hand edit made inside that window is the subject of
        its own test, not something other tests should trip over."""
        last = self.status()["lastPass"]
        assert last is not None, "no pass has run yet"
        wait = last["at"] + QUIET_AFTER_APPLY + 0.2 - time.time()
        if wait > 0:
            time.sleep(wait)


class Daemons:
    """Starts daemons for one test under `workdir`; kills leftovers on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[DaemonProcess] = []
        self._count = 0
        workdir.mkdir(parents=True, exist_ok=True)
        self.api_token_file = workdir / "api-token"
        self.api_token_file.write_text(API_TOKEN + "\n")
        self.webhook_secret_file = workdir / "webhook-secret"
        self.webhook_secret_file.write_text(WEBHOOK_SECRET + "\n")

    def make(
        self,
        repo: str | Path,
        *,
        root: Path,
        state_dir: Path | None = None,
        interval: str = "1h",
        api_token: bool = True,
        webhook_secret: bool = True,
        secrets: Iterable[str] = (),
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> DaemonProcess:
        """A daemon, not yet started. `secrets` are values its log must never show."""
        self._count += 1
        port = port or free_port()
        state_dir = state_dir or self.workdir / "state"
        argv = [
            sys.executable,
            "-m",
            "reconciler",
            "run",
            "--repo",
            str(repo),
            "--root",
            str(root),
            "--state-dir",
            str(state_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            interval,
        ]
        if api_token:
            argv += ["--api-token-file", str(self.api_token_file)]
        if webhook_secret:
            argv += ["--webhook-secret-file", str(self.webhook_secret_file)]
        argv += list(args)
        daemon = DaemonProcess(
            argv=argv,
            port=port,
            state_dir=state_dir,
            log_path=self.workdir / f"daemon-{self._count}.log",
            cwd=self.workdir,
            secrets=(API_TOKEN, WEBHOOK_SECRET, *secrets),
            api_token=API_TOKEN if api_token else None,
            webhook_secret=WEBHOOK_SECRET if webhook_secret else None,
            env=env,
        )
        self.started.append(daemon)
        return daemon

    def start(self, repo: str | Path, *, ready: bool = True, **options: Any) -> DaemonProcess:
        """Start a daemon and wait until it is healthy (and, with `ready`, has
        converged its first revision)."""
        daemon = self.make(repo, **options)
        daemon.start()
        daemon.wait_healthy()
        if ready:
            daemon.wait_ready()
        return daemon

    def close(self) -> None:
        for daemon in self.started:
            daemon.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`reconciler <args>` as a process (for `status`)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    full_env.update(SECRETS_ANYWHERE)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )
