"""Limits of the postgres connection client against the real server: a statement
that waits on a lock past the connection's `statementTimeout` fails as a
temporary error instead of holding the pass; a connection that a new revision
changes or removes leaves no idle session behind."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.manifests import load
from reconciler.model import ProviderSettings, Sensitive, TemporaryError
from reconciler.providers import _postgres
from reconciler.providers.connection import (
    ConnectionProvider,
    ConnectionSpec,
    PostgresConnection,
)
from reconciler.providers.postgres_role import PostgresRoleProvider
from reconciler.registry import Registry
from tests.postgres import Server

pytestmark = pytest.mark.timeout(30)


def _connection(server: Server, **over: Any) -> PostgresConnection:
    data = server.connection(**over)
    data["password"] = Sensitive(server.password, "sensitive:test:limits")
    return PostgresConnection.model_validate(data)


@pytest.fixture(autouse=True)
async def _close_pools() -> AsyncIterator[None]:
    yield
    await _postgres.close_pools()


def _sessions(server: Server) -> int:
    rows = server.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'reconciler'")
    return int(rows[0][0])


async def test_a_statement_waiting_on_a_lock_is_a_temporary_error(
    postgres_server: Server,
) -> None:
    postgres_server.sql("DROP ROLE IF EXISTS lock_role; CREATE ROLE lock_role")
    settings = ProviderSettings()
    settings.connections.install({"db": _connection(postgres_server, statementTimeout="500ms")})
    provider = PostgresRoleProvider(settings)
    spec = provider.Spec.model_validate(
        {"connection": "db", "name": "lock_role", "connectionLimit": 3}
    )
    plan = provider.plan(spec, await provider.observe(spec))
    assert not plan.empty
    holder = postgres_server.connect()
    holder.autocommit = False
    try:  # another session changes the same role and does not commit: a row lock
        holder.execute("ALTER ROLE lock_role CONNECTION LIMIT 7")
        started = time.monotonic()
        with pytest.raises(TemporaryError, match=r"lock timeout|canceling statement"):
            await provider.apply(spec, plan)
        assert time.monotonic() - started < 5
    finally:
        holder.rollback()
        holder.close()
        postgres_server.sql("DROP ROLE lock_role")


async def test_a_changed_connection_leaves_no_idle_session(postgres_server: Server) -> None:
    await _postgres.close_pools()
    before = _sessions(postgres_server)
    provider = ConnectionProvider(ProviderSettings())
    for timeout in ("5s", "6s", "7s"):  # three revisions, each changes the connection
        conn = _connection(postgres_server, connectTimeout=timeout)
        provider.bind({"Connection/db": ConnectionSpec(conn)})
        await _postgres.ping(conn)
    assert _sessions(postgres_server) == before + 1  # the current connection's only
    provider.bind({})  # the Connection removed
    assert _sessions(postgres_server) == before


def test_the_statement_timeout_is_a_duration() -> None:
    conn = PostgresConnection.model_validate(
        {"type": "postgres", "host": "h", "user": "u", "statementTimeout": "2m"}
    )
    assert conn.statement_timeout == 120.0
    with pytest.raises(ValueError, match="duration"):
        PostgresConnection.model_validate(
            {"type": "postgres", "host": "h", "user": "u", "statementTimeout": "soon"}
        )


def test_an_unquoted_on_key_is_on(tmp_path: Path) -> None:
    """YAML 1.1 reads `on:` as the key true; a grant written as the docs show loads."""
    (tmp_path / "g.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Connection\nmetadata: {name: db}\n"
        "spec: {type: postgres, host: 127.0.0.1, user: postgres}\n---\n"
        "apiVersion: reconciler/v1\nkind: PostgresGrant\nmetadata: {name: g}\n"
        "spec:\n  connection: db\n  role: app\n  on: allTablesInSchema\n"
        "  database: app\n  schema: public\n  privileges: [SELECT]\n"
    )
    desired = load(tmp_path, Registry.discover(ProviderSettings()))
    spec = desired.resources["PostgresGrant/g"].spec
    assert spec.on == "allTablesInSchema"  # type: ignore[attr-defined]
