"""The two store backends as the conformance suite opens them: SQLite in a
temporary state directory, PostgreSQL in a fresh database of the session's
server (tests/postgres.py), so each test starts empty."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from reconciler.store import PostgresStore, SqliteStore
from reconciler.store.buffered import BufferedStore
from tests.postgres import Server


@dataclass
class Backend:
    """How to open (and reopen) one test's store."""

    name: str
    state_dir: Path
    server: Server | None = None
    dbname: str | None = None

    @property
    def url(self) -> str | None:
        if self.server is None:
            return None
        return f"postgresql://postgres@{self.server.host}:{self.server.port}/{self.dbname}"

    def open(self, *, shard: str = "default", history_limit: int = 50_000) -> BufferedStore:
        if self.server is None:
            return SqliteStore(self.state_dir, history_limit=history_limit)
        assert self.url is not None
        return PostgresStore(
            self.url, shard=shard, password=self.server.password, history_limit=history_limit
        )

    def sql(self, query: str, params: object = None) -> list[tuple[object, ...]]:
        """Out of band, in the test's database (PostgreSQL only)."""
        assert self.server is not None and self.dbname is not None
        return self.server.sql(query, params, dbname=self.dbname)


def postgres_backend(server: Server, tmp_path: Path) -> Backend:
    dbname = "t_" + uuid.uuid4().hex[:12]
    server.sql(f"CREATE DATABASE {dbname}")
    return Backend("postgres", tmp_path / "state", server, dbname)
