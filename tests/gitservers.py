"""Real git servers on 127.0.0.1 for tests: bare repositories, a working clone that
commits and pushes, `git daemon`, smart HTTP with token auth, and sshd with key auth.

Everything here is a context manager that starts and stops cleanly, with a thin
pytest fixture on top. Other suites reuse them by importing the fixtures into their
conftest (`from tests.gitservers import git_repos, git_daemon  # noqa: F401`) or by
using the context managers directly.

Layout: one directory (`GitRepos.root`) holds bare repositories; every server
exports that same directory, so a test can push through `file://` (fast) and read
through any server.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hmac
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

from tests.system import ensure_debian

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.test",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.test",
}
"""A fixed identity, so commits never depend on the machine's git config."""

_START_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, *, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.02)


def run_git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """Run git with a fixed identity; return stdout; raise with stderr on failure."""
    full_env = {**os.environ, **GIT_IDENTITY, "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout.strip()


# --------------------------------------------------------------------------- repos


class WorkClone:
    """A non-bare clone to make commits in and push them (force and deletes too)."""

    def __init__(self, path: Path, remote_url: str, env: Mapping[str, str] | None = None):
        self.path = path
        self.remote_url = remote_url
        self.env: dict[str, str] = dict(env or {})
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        self.git("config", "commit.gpgsign", "false")
        self.git("config", "tag.gpgsign", "false")
        self.git("remote", "add", "origin", remote_url)

    def git(self, *args: str) -> str:
        return run_git(*args, cwd=self.path, env=self.env)

    def write(self, files: Mapping[str, str | None]) -> None:
        """Write files (relative paths); a None content removes the file."""
        for name, content in files.items():
            target = self.path / name
            if content is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)

    def symlink(self, name: str, target: str) -> None:
        link = self.path / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)

    def commit(self, message: str, files: Mapping[str, str | None] | None = None) -> str:
        """Write `files`, stage everything, commit; return the new commit's SHA."""
        if files:
            self.write(files)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.rev()

    def rev(self, name: str = "HEAD") -> str:
        return self.git("rev-parse", f"{name}^{{commit}}")

    def branch(self, name: str, start: str = "HEAD") -> None:
        """Create (or reset) branch `name` at `start` and check it out."""
        self.git("checkout", "-q", "-B", name, start)

    def reset_hard(self, rev: str) -> None:
        self.git("reset", "-q", "--hard", rev)

    def push(self, branch: str | None = None, *, force: bool = False) -> None:
        """Push `branch` (default: the checked-out one) to the same name on origin."""
        name = branch or self.git("symbolic-ref", "--short", "HEAD")
        self.git("push", "-q", *(["--force"] if force else []), "origin", f"{name}:{name}")

    def tag(self, name: str, *, message: str | None = None, push: bool = True) -> None:
        """Tag HEAD (annotated when `message` is given) and push the tag."""
        self.git("tag", "-f", *(["-a", "-m", message] if message else []), name)
        if push:
            self.git("push", "-q", "--force", "origin", f"refs/tags/{name}")

    def delete_remote_branch(self, name: str) -> None:
        self.git("push", "-q", "origin", f":refs/heads/{name}")

    def delete_remote_tag(self, name: str) -> None:
        self.git("push", "-q", "origin", f":refs/tags/{name}")


@dataclass
class GitRepos:
    """A directory of bare repositories; the servers below export it."""

    root: Path
    _clones: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def create(self, name: str = "repo.git") -> Path:
        """`git init --bare -b main` (without -b main, remote HEAD would dangle)."""
        path = self.root / name
        run_git("init", "-q", "--bare", "-b", "main", str(path))
        # Let the smart-HTTP server accept pushes too.
        run_git("config", "http.receivepack", "true", cwd=path)
        return path

    def file_url(self, name: str = "repo.git") -> str:
        return (self.root / name).as_uri()

    def clone(self, name: str = "repo.git", *, url: str | None = None) -> WorkClone:
        """A fresh working clone pushing to `url` (default: the repo's file:// URL)."""
        self._clones += 1
        path = self.root.parent / f"work-{self.root.name}-{self._clones}"
        return WorkClone(path, url or self.file_url(name))


# --------------------------------------------------------------------------- servers


class _Server:
    """Context-manager plumbing shared by the servers: start on enter, stop on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        if proc is not None:
            proc.wait()
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class GitDaemon(_Server):
    """`git daemon` exporting `base` on git://127.0.0.1:<port>/, pushes enabled.

    `stop()` then `start()` brings it back on the same port (for outage tests).
    """

    def __init__(self, base: Path, *, port: int | None = None):
        self.base = base
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = base.parent / f"git-daemon-{self.port}.log"

    def url(self, name: str = "repo.git") -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    "git",
                    "daemon",
                    f"--base-path={self.base}",
                    "--export-all",
                    "--enable=receive-pack",
                    "--informative-errors",
                    "--listen=127.0.0.1",
                    f"--port={self.port}",
                    "--reuseaddr",
                    str(self.base),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_for_port(self.port, proc=self._proc)

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None


@dataclass
class HTTPRequestRecord:
    """What the smart-HTTP server saw (for assertions about auth)."""

    method: str
    path: str
    authorization: str | None
    authorized: bool


class SmartHTTPServer(_Server):
    """`git http-backend` behind a ThreadingHTTPServer on http://127.0.0.1:<port>/.

    With `token` set, every request needs `Authorization: Bearer <token>` or Basic
    auth whose password is the token (any user); otherwise 401. `delay` seconds are
    slept before each response (a slow server). `protocol_v2=False` drops the
    client's Git-Protocol header, so the server speaks protocol v0 (which refuses
    wants of unadvertised commits).
    """

    def __init__(
        self,
        project_root: Path,
        *,
        token: str | None = None,
        port: int | None = None,
        delay: float = 0.0,
        protocol_v2: bool = True,
    ):
        self.project_root = project_root
        self.token = token
        self.port = port or free_port()
        self.delay = delay
        self.protocol_v2 = protocol_v2
        self.requests: list[HTTPRequestRecord] = []
        self.hangups = 0
        """Requests whose client went away before the answer was sent."""
        self.answered = threading.Condition()
        self.finished = 0
        """Requests done with (answered or hung up on), under `answered`."""
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, name: str = "repo.git") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        server = self

        class Handler(_GitHTTPHandler):
            owner = server

        self._httpd = _GitHTTPD(("127.0.0.1", self.port), Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"git-http-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def wait_requests(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` requests have been read (and recorded in `requests`)."""
        with self.answered:
            if not self.answered.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} of {count} requests read")

    def wait_finished(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` requests are done with (the answer sent, or the client gone)."""
        with self.answered:
            if not self.answered.wait_for(lambda: self.finished >= count, timeout):
                raise AssertionError(f"{self.finished} of {count} requests finished")

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(value.strip().encode(), self.token.encode())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except ValueError:
                return False
            _, _, password = decoded.partition(":")
            return hmac.compare_digest(password.encode(), self.token.encode())
        return False


class _GitHTTPD(ThreadingHTTPServer):
    """A client that hangs up before its answer is normal (a fetch that timed out,
    a cancelled clone): counted in `hangups`, not printed as a traceback. Any
    other error of a handler is still printed, as by http.server."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        owner: SmartHTTPServer,
    ) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # reset, broken pipe, aborted
            with self.owner.answered:
                self.owner.hangups += 1
            return
        super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self.owner.answered:
            self.owner.finished += 1
            self.owner.answered.notify_all()


class _GitHTTPHandler(BaseHTTPRequestHandler):
    """Runs `git http-backend` as CGI for each request (HTTP/1.0: one per connection)."""

    owner: SmartHTTPServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; requests are recorded in owner.requests

    def _handle(self) -> None:
        owner = self.owner
        auth = self.headers.get("Authorization")
        ok = owner.authorized(auth)
        with owner.answered:
            owner.requests.append(HTTPRequestRecord(self.command, self.path, auth, ok))
            owner.answered.notify_all()
        if owner.delay:
            time.sleep(owner.delay)
        if not ok:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self._read_body()
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(owner.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            # http-backend refuses receive-pack for anonymous users.
            "REMOTE_USER": "tester",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if owner.protocol_v2 and self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        result = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60
        )
        # CGI output: headers, a blank line (CRLF or LF), then the body.
        head, sep, payload = result.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = result.stdout.partition(b"\n\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = io.BytesIO()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()  # the blank line after the last chunk
                    return out.getvalue()
                out.write(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


SSHD = "/usr/sbin/sshd"


def ensure_sshd() -> str:
    """The sshd binary; installs openssh-server if missing."""
    return ensure_debian(SSHD, "openssh-server")


def keygen(path: Path) -> None:
    """An unencrypted ed25519 key pair at `path` and `path`.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


class SSHServer(_Server):
    """sshd on 127.0.0.1:<port> accepting one client key for the current user.

    Attributes for clients: `client_key` (private key file), `known_hosts` (a file
    trusting this server's host key), `url(name)` (ssh:// URL of a repo in `base`),
    and `client_env()` (GIT_SSH_COMMAND for pushes from a WorkClone).
    """

    def __init__(self, base: Path, workdir: Path, *, port: int | None = None):
        self.base = base
        self.workdir = workdir
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.client_key = workdir / "client_ed25519"
        self.host_key = workdir / "ssh_host_ed25519_key"
        self.known_hosts = workdir / "known_hosts"
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str = "repo.git") -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{self.base / name}"

    def known_hosts_line(self) -> str:
        key_type, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key}\n"

    def client_env(self) -> dict[str, str]:
        return {
            "GIT_SSH_COMMAND": (
                f"ssh -i {self.client_key} -o IdentitiesOnly=yes -o BatchMode=yes "
                f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes"
            )
        }

    def start(self) -> None:
        sshd = ensure_sshd()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # sshd's privilege-separation directory; not created by the package in containers.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key)
        if not self.client_key.exists():
            keygen(self.client_key)
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        self.known_hosts.write_text(self.known_hosts_line())
        config = self.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AllowUsers {self.user}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "AcceptEnv GIT_PROTOCOL",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        with (self.workdir / "sshd.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_for_port(self.port, proc=self._proc)

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def git_repos(tmp_path: Path) -> GitRepos:
    """An empty directory of bare repositories under the test's tmp dir."""
    return GitRepos(tmp_path / "srv")


@pytest.fixture
def git_daemon(git_repos: GitRepos) -> Iterator[GitDaemon]:
    with GitDaemon(git_repos.root) as daemon:
        yield daemon


HTTP_TOKEN = "tok-3f9a1c77e2-not-a-real-secret"
"""The token `git_http_server` demands; tests assert it never leaks."""


@pytest.fixture
def git_http_server(git_repos: GitRepos) -> Iterator[SmartHTTPServer]:
    with SmartHTTPServer(git_repos.root, token=HTTP_TOKEN) as server:
        yield server


@pytest.fixture
def git_ssh_server(git_repos: GitRepos, tmp_path: Path) -> Iterator[SSHServer]:
    with SSHServer(git_repos.root, tmp_path / "ssh") as server:
        yield server


@contextlib.contextmanager
def stopped(server: GitDaemon | SmartHTTPServer | SSHServer) -> Iterator[None]:
    """Take `server` down for the block, then bring it back on the same port."""
    server.stop()
    try:
        yield
    finally:
        server.start()
