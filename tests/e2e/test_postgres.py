"""PostgreSQL through the real CLI: `python -m reconciler plan/apply` on a config
tree with a Connection (its password from a secret file), roles, a database and
grants, against the session's real server (tests/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg import sql

from tests.conftest import Sandbox, doc, docs
from tests.postgres import Server

pytestmark = pytest.mark.timeout(60)

APP_PASSWORD = "e2e-app-pw-7Qx"


@pytest.fixture
def pg(postgres_server: Server) -> Iterator[Server]:
    """The server, with what these tests make dropped afterwards."""
    yield postgres_server
    postgres_server.sql("DROP DATABASE IF EXISTS e2e_app WITH (FORCE)")
    for role in ("e2e_app", "e2e_readers", "e2e_other"):
        postgres_server.sql(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def tree(sandbox: Sandbox, pg: Server, *, grant: bool = True, password: str | None = None) -> None:
    secrets = sandbox.root.parent / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "db").write_text((password or pg.password) + "\n")
    (secrets / "app").write_text(APP_PASSWORD + "\n")
    connection = pg.connection(password={"valueFrom": {"file": str(secrets / "db")}})
    documents = [
        doc("Connection", "main", connection),
        doc("PostgresRole", "readers", {"connection": "main", "name": "e2e_readers"}),
        doc(
            "PostgresRole",
            "app",
            {
                "connection": "main",
                "name": "e2e_app",
                "login": True,
                "password": {"valueFrom": {"file": str(secrets / "app")}},
                "memberOf": ["e2e_readers"],
                "connectionLimit": 10,
            },
            {"dependsOn": ["PostgresRole/readers"]},
        ),
        doc(
            "PostgresDatabase",
            "app",
            {"connection": "main", "name": "e2e_app", "owner": "e2e_app", "encoding": "UTF8"},
            {"dependsOn": ["PostgresRole/app"]},
        ),
    ]
    if grant:
        documents.append(
            doc(
                "PostgresGrant",
                "readers-connect",
                {
                    "connection": "main",
                    "role": "e2e_readers",
                    "on": "database",
                    "database": "e2e_app",
                    "privileges": ["CONNECT", "TEMP"],
                },
                {"dependsOn": ["PostgresDatabase/app", "PostgresRole/readers"]},
            )
        )
    documents.append(doc("Directory", "elsewhere", {"path": str(sandbox.root / "elsewhere")}))
    sandbox.write("db.yaml", docs(*documents))


def db_privileges(pg: Server, role: str) -> list[str]:
    rows = pg.sql(
        "SELECT a.privilege_type FROM pg_database d, aclexplode(d.datacl) a "
        "JOIN pg_roles r ON r.oid = a.grantee WHERE d.datname = 'e2e_app' AND r.rolname = %s "
        "ORDER BY 1",
        (role,),
    )
    return [r[0] for r in rows]


def secret_free(sandbox: Sandbox, *outputs: str, secrets: tuple[str, ...]) -> None:
    stored = b"".join(p.read_bytes() for p in sandbox.state.rglob("*") if p.is_file())
    for secret in secrets:
        for text in outputs:
            assert secret not in text
        assert secret.encode() not in stored


def test_apply_plan_drift_and_prune(sandbox: Sandbox, pg: Server) -> None:
    tree(sandbox, pg)
    first = sandbox.run("plan", check=2)
    assert "+ PostgresRole/app" in first.stdout, first.stdout
    applied = sandbox.run("apply", check=0)
    assert pg.sql("SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = 'e2e_app'") == [
        (True, 10)
    ]
    assert pg.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'e2e_app'") == [
        ("e2e_app",)
    ]
    assert db_privileges(pg, "e2e_readers") == ["CONNECT", "TEMPORARY"]
    second = sandbox.run("plan", check=0)
    assert "Plan: 0 to create, 0 to change, 0 to delete" in second.stdout, second.stdout

    # out of band: the password and an attribute by hand
    pg.sql("ALTER ROLE e2e_app PASSWORD 'typed-by-hand' CONNECTION LIMIT 1")
    drift = sandbox.run("plan", check=2)
    assert "password: (sensitive value changed)" in drift.stdout, drift.stdout
    assert "connectionLimit: 1 -> 10" in drift.stdout
    healed = sandbox.run("apply", check=0)
    assert pg.sql("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'e2e_app'") == [(10,)]
    sandbox.run("plan", check=0)

    # the grant leaves the tree: revoked, as reconciler granted it
    tree(sandbox, pg, grant=False)
    pruned = sandbox.run("apply", check=0)
    assert db_privileges(pg, "e2e_readers") == []
    secret_free(
        sandbox,
        *(r.stdout + r.stderr for r in (first, applied, second, drift, healed, pruned)),
        secrets=(APP_PASSWORD, pg.password),
    )


def test_a_wrong_connection_password_fails_its_resources_only(sandbox: Sandbox, pg: Server) -> None:
    tree(sandbox, pg, password="not-the-db-password")
    result = sandbox.run("apply", check=1)
    out = result.stdout + result.stderr
    assert "password authentication failed" in out, out
    assert (sandbox.root / "elsewhere").is_dir()  # the rest converged
    assert pg.sql("SELECT 1 FROM pg_roles WHERE rolname = 'e2e_app'") == []
    secret_free(sandbox, out, secrets=("not-the-db-password", APP_PASSWORD))
