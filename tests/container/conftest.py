"""Fixtures of the container tests: a private dockerd with a locally made
`debian:bookworm-slim`, and the reconciler image built from this source tree.
Package-scoped: made once, and stopped as soon as these tests are done rather
than at the end of the whole run.

Costs on a clean machine: apt installs docker.io and debootstrap (~20 s),
debootstrap makes the base (~40 s, then cached for the day in
/var/cache/reconciler-tests), pip downloads the dependencies' wheels (~10 s, cached
per dependency list), and the image build (~70 s). The tests skip only when not
root (dockerd needs it); anything else that breaks fails them with the log that
says why.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.container.dockerd import (
    Dockerd,
    DockerError,
    PyPIMirror,
    Wheelhouse,
    base_image_tarball,
)
from tests.system import ensure_debian

SOURCE_TREE = Path(__file__).resolve().parents[2]
IMAGE = "reconciler:test"
BASE_IMAGE = "debian:bookworm-slim"


@pytest.fixture(scope="package")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build and daemon logs, kept by pytest after the run for a post-mortem."""
    return tmp_path_factory.mktemp("container-logs")


@pytest.fixture(scope="package")
def docker(logs_dir: Path) -> Iterator[Dockerd]:
    """A running private dockerd with `BASE_IMAGE` imported; stopped (and its
    directory removed) after the last container test, whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("the container tests start their own dockerd, which needs root")
    dockerd = ensure_debian("/usr/sbin/dockerd", "docker.io")
    # The client of the same package: another docker CLI on PATH may be a newer
    # one that wants BuildKit's buildx plugin for `docker build`.
    client = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
    if client is None:
        pytest.fail("docker.io is installed but no docker client was found")
    debootstrap = ensure_debian("/usr/sbin/debootstrap", "debootstrap")
    # Short, since the sockets of dockerd and containerd live under it.
    daemon = Dockerd(dockerd, client, Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp")))
    try:
        try:
            daemon.start()
            tarball = base_image_tarball(debootstrap, daemon.workdir, logs_dir / "base.log")
            daemon.docker("import", str(tarball), BASE_IMAGE, timeout=300)
        except DockerError as exc:
            pytest.fail(f"{exc}\n(logs in {logs_dir})", pytrace=False)
        yield daemon
    finally:
        if daemon.log.exists():
            shutil.copy(daemon.log, logs_dir / "dockerd.log")
        daemon.stop()


@pytest.fixture(scope="package")
def image(docker: Dockerd, logs_dir: Path) -> str:
    """`IMAGE`, built from this source tree by the real Dockerfile, with pip fed
    from a local mirror of the dependencies (`--build-arg PIP_INDEX_URL`)."""
    log = logs_dir / "build.log"
    try:
        wheels = Wheelhouse(SOURCE_TREE / "pyproject.toml", log).ensure()
        with PyPIMirror(wheels) as mirror:
            docker.docker_logged(
                "build",
                "--network=host",
                f"--build-arg=PIP_INDEX_URL={mirror.index_url}",
                f"--tag={IMAGE}",
                str(SOURCE_TREE),
                log=log,
                timeout=600,
                what="docker build",
            )
    except DockerError as exc:
        pytest.fail(f"{exc}\n(full log: {log})", pytrace=False)
    return IMAGE
