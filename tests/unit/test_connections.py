"""Connections as the loader and the engine see them: the Connection kind's
validation (field paths through its tagged union), secrets by reference only,
implicit dependencies of the resources that name one, existence and type
checks, and the table the engine fills before a pass."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from reconciler.engine import Engine
from reconciler.manifests import ManifestError, load
from reconciler.model import (
    NO_CHANGES,
    SENSITIVE,
    Observed,
    PermanentError,
    Plan,
    Provider,
    ProviderSettings,
)
from reconciler.providers.connection import (
    ConnectionProvider,
    HttpConnection,
    PostgresConnection,
)
from reconciler.registry import Registry
from reconciler.store.sqlite import SqliteStore


class _ThingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    connection: str
    value: str = ""


class _Thing(Provider[_ThingSpec]):
    """A kind that lives behind a postgres connection; it records what it saw."""

    kind = "Thing"
    Spec = _ThingSpec
    connection_type = "postgres"
    seen: ClassVar[list[str]] = []

    async def observe_many(self, specs: Sequence[_ThingSpec]) -> list[Observed | None]:
        for spec in specs:
            conn = self.connection(spec, PostgresConnection)
            self.seen.append(f"{conn.host}:{conn.port}")
        return [{} for _ in specs]

    def plan(self, spec: _ThingSpec, observed: Observed | None) -> Plan:
        return NO_CHANGES

    async def apply(self, spec: _ThingSpec, plan: Plan) -> None:
        return None

    async def delete(self, spec: _ThingSpec) -> None:
        return None


def _registry() -> Registry:
    settings = ProviderSettings()
    return Registry([ConnectionProvider(settings), _Thing(settings)])


PG = (
    "apiVersion: reconciler/v1\nkind: Connection\nmetadata: {{name: {name}}}\n"
    "spec:\n  type: postgres\n  host: {host}\n  user: admin\n"
    "  password: {{valueFrom: {{file: {secret}}}}}\n"
)
HTTP = (
    "apiVersion: reconciler/v1\nkind: Connection\nmetadata: {name: api}\n"
    "spec: {type: http, baseUrl: 'http://127.0.0.1:1/v1/'}\n"
)
THING = (
    "apiVersion: reconciler/v1\nkind: Thing\nmetadata: {{name: {name}}}\n"
    "spec: {{connection: {connection}}}\n"
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "secret").write_text("s3cr3t-password\n")
    config = tmp_path / "config"
    config.mkdir()
    return config


def _errors(config: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load(config, _registry())
    return [str(issue) for issue in caught.value.issues]


def test_a_resource_depends_on_the_connection_it_names(tree: Path) -> None:
    secret = tree.parent / "secret"
    (tree / "db.yaml").write_text(PG.format(name="db", host="127.0.0.1", secret=secret))
    (tree / "t.yaml").write_text(THING.format(name="a", connection="db"))
    desired = load(tree, _registry())
    assert desired.dependencies["Thing/a"] == ("Connection/db",)
    conn = desired.resources["Connection/db"].spec.root
    assert conn.password == "s3cr3t-password"  # resolved for the provider to use
    dumped = desired.resources["Connection/db"].spec.model_dump_json()
    assert "s3cr3t" not in dumped and "sensitive:hmac-sha256:" in dumped
    assert "s3cr3t" not in repr(conn)
    assert repr(conn.password) == repr(SENSITIVE)


def test_a_missing_connection_is_an_error_at_the_field(tree: Path) -> None:
    (tree / "t.yaml").write_text(THING.format(name="a", connection="nowhere"))
    assert _errors(tree) == [
        "t.yaml:4: spec.connection: names Connection/nowhere, which is not defined in this revision"
    ]


def test_a_connection_of_the_wrong_type_is_an_error(tree: Path) -> None:
    (tree / "api.yaml").write_text(HTTP)
    (tree / "t.yaml").write_text(THING.format(name="a", connection="api"))
    [error] = _errors(tree)
    assert error.startswith("t.yaml:4: spec.connection: Connection/api is a connection of type")
    assert "'http'" in error and "needs one of type 'postgres'" in error


_PG = "{type: postgres, host: h, user: u, "
_HTTP = "{type: http, baseUrl: 'http://x', "


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (_PG + "password: hunter2}", "spec.password: expected a secret reference"),
        (_PG + "colour: red}", "spec.colour: unknown field; expected one of type, host"),
        ("{type: postgres, user: u}", "spec.host: required field is missing"),
        ("{type: ftp}", "spec.type: expected one of postgres, http, found 'ftp'"),
        ("{host: h}", "spec.type: required field is missing; one of postgres, http"),
        ("{type: http, baseUrl: 'ftp://x'}", "spec.baseUrl: expected an absolute http://"),
        (_HTTP + "auth: {bearer: tok}}", "spec.auth.bearer: expected a secret reference"),
        (_HTTP + "auth: {basic: {username: u, pw: x}}}", "spec.auth.basic.pw: unknown field"),
        (_HTTP + "headers: {'a b': c}}", "spec.headers: 'a b' is not a valid HTTP header"),
        (_HTTP + "caFile: rel/ca.pem}", "spec.caFile: expected an absolute path"),
        (_HTTP + "maxInFlight: 0}", "spec.maxInFlight: Input should be greater than or equal"),
    ],
)
def test_invalid_connections_name_the_field(tree: Path, spec: str, expected: str) -> None:
    doc = f"apiVersion: reconciler/v1\nkind: Connection\nmetadata: {{name: c}}\nspec: {spec}\n"
    (tree / "c.yaml").write_text(doc)
    errors = _errors(tree)
    assert any(expected in e for e in errors), errors
    assert all("hunter2" not in e and "tok" not in e.split(":", 2)[-1] for e in errors)


def test_http_secrets_by_reference_in_headers_and_auth(tree: Path) -> None:
    secret = tree.parent / "secret"
    (tree / "api.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Connection\nmetadata: {name: api}\n"
        f"spec:\n  type: http\n  baseUrl: https://127.0.0.1:8443/api/\n"
        f"  headers: {{X-Team: web, X-Key: {{valueFrom: {{file: {secret}}}}}}}\n"
        f"  auth: {{basic: {{username: u, password: {{valueFrom: {{file: {secret}}}}}}}}}\n"
    )
    desired = load(tree, _registry())
    conn = desired.resources["Connection/api"].spec.root
    assert isinstance(conn, HttpConnection)
    assert conn.base_url == "https://127.0.0.1:8443/api"
    assert conn.headers["X-Key"] == "s3cr3t-password" and conn.headers["X-Team"] == "web"
    assert conn.auth is not None and conn.auth.basic is not None
    assert conn.auth.basic.password == "s3cr3t-password"
    assert "s3cr3t" not in desired.resources["Connection/api"].spec.model_dump_json()


async def test_the_engine_installs_the_connections_before_a_pass(
    tree: Path, tmp_path: Path
) -> None:
    secret = tree.parent / "secret"
    (tree / "db.yaml").write_text(PG.format(name="db", host="db.invalid", secret=secret))
    (tree / "t.yaml").write_text(THING.format(name="a", connection="db"))
    registry = _registry()
    desired = load(tree, registry)
    thing = registry["Thing"]
    spec = desired.resources["Thing/a"].spec
    with pytest.raises(PermanentError, match="connection 'db' is not declared"):
        thing.connection(spec, PostgresConnection)  # nothing installed before a pass
    store = SqliteStore(tmp_path / "state")
    try:
        Engine(registry, store).bind(desired)
    finally:
        store.close()
    _Thing.seen = []
    assert await thing.observe_many([spec]) == [{}]
    assert _Thing.seen == ["db.invalid:5432"]
    with pytest.raises(PermanentError, match="is not a HttpConnection"):
        thing.connection(spec, HttpConnection)
    # a later desired state without the Connection empties the table
    (tree / "db.yaml").unlink()
    (tree / "t.yaml").unlink()
    store = SqliteStore(tmp_path / "state")
    try:
        Engine(registry, store).bind(load(tree, registry))
    finally:
        store.close()
    with pytest.raises(PermanentError, match="connection 'db' is not declared"):
        thing.connection(spec, PostgresConnection)
