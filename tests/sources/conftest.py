"""Fixtures for the source tests: the real git servers of tests.gitservers and a
factory of GitSources, each with its own cache directory."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.sources.git import GitSource
from tests.gitservers import (  # noqa: F401 - fixtures, used by name
    git_daemon,
    git_http_server,
    git_repos,
    git_ssh_server,
)

SourceFactory = Callable[..., GitSource]


@pytest.fixture
def make_source(tmp_path: Path) -> SourceFactory:
    """GitSource(url, ref=None, path="", cache_dir=<fresh dir>, **overrides)."""
    counter = itertools.count()

    def make(url: str, **kwargs: Any) -> GitSource:
        kwargs.setdefault("ref", None)
        kwargs.setdefault("path", "")
        kwargs.setdefault("cache_dir", tmp_path / f"cache-{next(counter)}")
        kwargs.setdefault("timeout", 30.0)
        return GitSource(url, **kwargs)

    return make
