"""The `backend` fixture: every conformance test runs on SQLite and on a real
PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.postgres import Server
from tests.store.backends import Backend, postgres_backend


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", tmp_path / "state")
    return postgres_backend(request.getfixturevalue("postgres_server"), tmp_path)


@pytest.fixture
def pg(postgres_server: Server, tmp_path: Path) -> Backend:
    """PostgreSQL only: shards, the schema's lock, fencing."""
    return postgres_backend(postgres_server, tmp_path)
