"""A private Docker daemon, a locally made base image and a local PyPI mirror, for
building and running the reconciler image in tests.

No registry image can be pulled on the machines the tests run on, so:

- `Dockerd` starts `dockerd` by hand with its own data root, exec root, socket,
  pid file and settings under one tmp directory, without touching the host's
  networking (`--iptables=false --ip-forward=false --bridge=none`); builds and
  containers use `--network host` (or `--network none`).
- `base_image_tarball` makes `debian:bookworm-slim` with `debootstrap --variant=minbase`
  from the Debian mirror apt on this machine already uses, trimmed the way the
  official slim image is, and keeps the tarball in `CACHE` for the day.
- `Wheelhouse` downloads the package's dependencies (and its build backend) once
  per dependency list into `CACHE`, as a PEP 503 index that `PyPIMirror` serves on
  127.0.0.1, for `docker build --build-arg PIP_INDEX_URL=...`: HTTPS from inside a
  build may not be trusted here, plain HTTP to loopback always is.

Every failure raises `DockerError` carrying the tail of the log that explains it;
the fixtures turn that into `pytest.fail`.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Mapping, Sequence
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

CACHE = Path("/var/cache/reconciler-tests")
"""What outlives a test session on one machine: base image tarballs, wheelhouses."""

DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PYTHON_TAG = "3.11"
"""The Python of Debian bookworm, which runs the image."""

_LOG_TAIL = 40


class DockerError(RuntimeError):
    """A step of building or running containers failed; the message has the log."""


def tail(text: str, lines: int = _LOG_TAIL) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_logged(
    argv: Sequence[str],
    log: Path,
    *,
    timeout: float,
    what: str,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run `argv` with its output appended to `log`; raise with the log's tail."""
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            result = subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise DockerError(
                f"{what} took more than {timeout:g} s:\n{tail(log.read_text(errors='replace'))}"
            ) from None
    if result.returncode != 0:
        raise DockerError(
            f"{what} failed (exit {result.returncode}):\n{tail(log.read_text(errors='replace'))}"
        )


# --------------------------------------------------------------------------- mounts


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """`rm -rf path`, after unmounting anything left mounted inside it (a dockerd
    or debootstrap that died mid-way), so nothing outside is ever removed."""
    if not path.exists():
        return
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
    if _mounts_under(path):
        raise DockerError(f"{path} still has mounts inside; not removing it")
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- dockerd


class Dockerd:
    """`dockerd` with everything of its own under `workdir` (short, for socket paths).

    `docker(...)` runs the client of the same Debian package against it.
    """

    def __init__(self, dockerd: str, client: str, workdir: Path):
        self.dockerd = dockerd
        self.client = client
        self.workdir = workdir
        self.socket = workdir / "docker.sock"
        self.log = workdir / "dockerd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(workdir / "client"),  # not root's ~/.docker
            "DOCKER_BUILDKIT": "0",
        }

    def start(self, *, timeout: float = 60.0) -> None:
        (self.workdir / "client").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "daemon.json"
        config.write_text("{}\n")  # not /etc/docker/daemon.json, whatever it holds
        argv = [
            self.dockerd,
            f"--config-file={config}",
            f"--data-root={self.workdir / 'root'}",
            f"--exec-root={self.workdir / 'exec'}",
            f"--host=unix://{self.socket}",
            f"--pidfile={self.workdir / 'dockerd.pid'}",
            "--iptables=false",
            "--ip-forward=false",
            "--bridge=none",
        ]
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest reaches it only through stop()
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise DockerError(
                    f"dockerd exited with {self._proc.returncode} while starting:\n"
                    f"{tail(self.log.read_text(errors='replace'))}"
                )
            probe = self.docker("version", "--format", "{{.Server.Version}}", check=False)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise DockerError(
                    f"dockerd did not answer on {self.socket} within {timeout:g} s:\n"
                    f"{tail(self.log.read_text(errors='replace'))}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop dockerd (it takes its containerd and any container along), then
        remove its directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        remove_tree(self.workdir)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker client; with `check`, raise with its stderr on failure."""
        result = subprocess.run(
            [self.client, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise DockerError(
                f"docker {' '.join(args)} failed (exit {result.returncode}):\n"
                f"{tail(result.stderr or result.stdout)}"
            )
        return result

    def docker_logged(self, *args: str, log: Path, timeout: float, what: str) -> None:
        """Run the docker client with its output going to `log` (a build)."""
        _run_logged([self.client, *args], log, timeout=timeout, what=what, env=self.env)

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


# --------------------------------------------------------------------------- base image


def apt_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian archive apt on this machine uses for `SUITE` (deb822 `.sources`
    or one-line `.list` files), else deb.debian.org."""
    candidates: list[tuple[str, list[str]]] = []  # (uri, suites)
    for path in sorted(etc_apt.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if (
                fields.get("enabled", "yes").lower() == "no"
                or "deb" not in fields.get("types", "").split()
            ):
                continue
            for uri in fields.get("uris", "").split():
                candidates.append((uri, fields.get("suites", "").split()))
    for path in [etc_apt / "sources.list", *sorted(etc_apt.glob("sources.list.d/*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                candidates.append((words[1], [words[2]]))
    for uri, suites in candidates:
        if SUITE in suites and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


_SLIM_DPKG = """\
# as in Docker's official debian:*-slim images
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""
_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb"
_SLIM_APT = f"""\
DPkg::Post-Invoke {{ "{_CLEAN} /var/cache/apt/*.bin || true"; }};
APT::Update::Post-Invoke {{ "{_CLEAN} /var/cache/apt/*.bin || true"; }};
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""


def _slim(rootfs: Path) -> None:
    """Trim a minbase tree the way the official slim image is trimmed, and make
    later apt installs in it leave documentation and .debs out too."""
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(_SLIM_DPKG)
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(_SLIM_APT)
    (rootfs / "etc/apt/apt.conf.d/docker-no-languages").write_text('Acquire::Languages "none";\n')
    for pattern in (
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/log/*.log",
    ):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name != "lock":
                path.unlink()


def base_image_tarball(debootstrap: str, scratch: Path, log: Path) -> Path:
    """A tarball of Debian `SUITE` minbase, slimmed; made at most once a day per
    mirror and kept in `CACHE` (older ones are removed)."""
    mirror = apt_mirror()
    digest = hashlib.sha256(mirror.encode()).hexdigest()[:12]
    day = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    name = f"debian-{SUITE}-minbase-{day}-{digest}.tar"
    target = CACHE / name
    if target.is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=scratch))
    try:
        _run_logged(
            [debootstrap, "--variant=minbase", SUITE, str(rootfs), mirror],
            log,
            timeout=600,
            what=f"debootstrap {SUITE} from {mirror}",
        )
        _slim(rootfs)
        partial_tar = CACHE / f".{name}.{os.getpid()}"
        _run_logged(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial_tar), "."],
            log,
            timeout=300,
            what="tar of the base image",
        )
        partial_tar.rename(target)  # atomic: a concurrent session sees all or nothing
    finally:
        remove_tree(rootfs)
    for old in CACHE.glob(f"debian-{SUITE}-minbase-*.tar"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- PyPI mirror


def _requirements(pyproject: Path) -> list[str]:
    data = tomllib.loads(pyproject.read_text())
    return [*data["project"]["dependencies"], *data["build-system"]["requires"]]


def _project(filename: str) -> str:
    """The normalized project name of a wheel file (PEP 503)."""
    return re.sub(r"[-_.]+", "-", filename.split("-", 1)[0]).lower()


class Wheelhouse:
    """Wheels of the package's dependencies and build backend for Debian's Python,
    as a PEP 503 simple index under `CACHE` (one per dependency list)."""

    def __init__(self, pyproject: Path, log: Path):
        self.requirements = _requirements(pyproject)
        key = hashlib.sha256("\n".join([PYTHON_TAG, *self.requirements]).encode()).hexdigest()
        self.root = CACHE / f"wheels-{key[:16]}"
        self.log = log

    def ensure(self) -> Path:
        if (self.root / "complete").is_file():
            return self.root
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".wheels-", dir=CACHE))
        try:
            files = staging / "files"
            platforms = ["manylinux_2_36_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
            _run_logged(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--dest",
                    str(files),
                    "--only-binary=:all:",
                    "--python-version",
                    PYTHON_TAG,
                    "--implementation",
                    "cp",
                    *(f"--platform={p}" for p in platforms),
                    *self.requirements,
                ],
                self.log,
                timeout=600,
                what="pip download of the image's dependencies",
            )
            projects: dict[str, list[str]] = {}
            for wheel in sorted(files.glob("*.whl")):
                projects.setdefault(_project(wheel.name), []).append(wheel.name)
            for project, wheels in projects.items():
                page = staging / "simple" / project / "index.html"
                page.parent.mkdir(parents=True)
                links = "".join(
                    f'<a href="../../files/{html.escape(w)}">{html.escape(w)}</a><br>\n'
                    for w in wheels
                )
                page.write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
            (staging / "complete").write_text("\n".join(sorted(projects)) + "\n")
            try:
                staging.rename(self.root)  # atomic: only complete wheelhouses are seen
            except OSError:
                if not (self.root / "complete").is_file():
                    raise  # not another session's finished wheelhouse
        finally:
            remove_tree(staging)
        return self.root


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class PyPIMirror:
    """Serves a `Wheelhouse` on http://127.0.0.1:<port>/ while the block runs."""

    def __init__(self, root: Path):
        self.root = root
        self._httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
        )
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="pypi-mirror", daemon=True
        )

    @property
    def index_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/simple"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- containers


class Container:
    """One container of `docker`, removed (with `-f`) by `remove()`."""

    def __init__(self, docker: Dockerd, name: str):
        self.docker = docker
        self.name = name

    @classmethod
    def run(cls, docker: Dockerd, name: str, image: str, *options: str) -> Container:
        """`docker run -d --name NAME OPTIONS... IMAGE`."""
        docker.docker("run", "--detach", "--name", name, *options, image, timeout=120)
        return cls(docker, name)

    def inspect(self, template: str) -> str:
        return self.docker.docker("inspect", "--format", template, self.name).stdout.strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def health(self) -> str:
        return self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def exec(self, *argv: str) -> str:
        return self.docker.docker("exec", self.name, *argv, timeout=60).stdout

    def logs(self) -> str:
        result = self.docker.docker("logs", "--tail", "60", self.name, check=False)
        return result.stdout + result.stderr

    def stop(self, timeout: int = 30) -> int:
        """`docker stop` (SIGTERM, SIGKILL after `timeout`); the exit code."""
        self.docker.docker("stop", "--time", str(timeout), self.name, timeout=timeout + 30)
        return int(self.inspect("{{.State.ExitCode}}"))

    def remove(self) -> None:
        self.docker.docker("rm", "--force", "--volumes", self.name, check=False)
