"""Fixtures of the end-to-end tests: real git servers and directories, and the
daemon factory, one set per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.daemon_harness import Daemons
from tests.e2e.ha_cluster import Cluster
from tests.gitservers import HTTP_TOKEN, GitDaemon, GitRepos, SmartHTTPServer, WorkClone
from tests.postgres import Server


@pytest.fixture
def repos(tmp_path: Path) -> GitRepos:
    return GitRepos(tmp_path / "srv")


@pytest.fixture
def work(repos: GitRepos) -> WorkClone:
    """A working clone of a fresh bare repository, pushing through file://."""
    repos.create()
    return repos.clone()


@pytest.fixture
def git_server(repos: GitRepos) -> Iterator[GitDaemon]:
    with GitDaemon(repos.root) as server:
        yield server


@pytest.fixture
def http_server(repos: GitRepos) -> Iterator[SmartHTTPServer]:
    with SmartHTTPServer(repos.root, token=HTTP_TOKEN) as server:
        yield server


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The directory the daemon manages (its --root)."""
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    with Daemons(tmp_path / "daemons") as factory:
        yield factory


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config tree for local mode (a plain directory)."""
    path = tmp_path / "config"
    path.mkdir()
    return path


@pytest.fixture
def cluster(
    postgres_server: Server, daemons: Daemons, root: Path, config: Path
) -> Iterator[Cluster]:
    """Daemons sharing one PostgreSQL store (tests/e2e/ha_cluster.py), stopped after."""
    made = Cluster(postgres_server, daemons, root, config)
    try:
        yield made
    finally:
        made.close()
