"""PostgresRole, PostgresDatabase and PostgresGrant against a real PostgreSQL 15
(tests/postgres.py): create, a second pass that changes nothing, drift made out
of band (psql-like sessions over the trusted socket) detected and healed,
update, delete; password drift by SCRAM comparison; hostile names; one query per
kind and pass; the errors of a bad connection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pydantic import BaseModel

from reconciler.model import (
    SENSITIVE,
    Action,
    Change,
    PermanentError,
    Plan,
    Provider,
    ProviderSettings,
    Sensitive,
    TemporaryError,
)
from reconciler.providers import _postgres
from reconciler.providers.connection import PostgresConnection
from reconciler.providers.postgres_database import PostgresDatabaseProvider
from reconciler.providers.postgres_grant import PostgresGrantProvider
from reconciler.providers.postgres_role import PostgresRoleProvider
from tests.postgres import Server

pytestmark = pytest.mark.timeout(30)

HOSTILE = ['we"ird; DROP ROLE postgres;--', "ünï cödé ☃", "sp ace", "x'); SELECT 1; --"]


def connection(server: Server, **over: Any) -> PostgresConnection:
    data = server.connection(**over)
    password = over.get("password", server.password)
    data["password"] = Sensitive(password, f"sensitive:test:{len(password)}")
    return PostgresConnection.model_validate(data)


@pytest.fixture
def settings(postgres_server: Server) -> ProviderSettings:
    settings = ProviderSettings()
    settings.connections.install({"db": connection(postgres_server)})
    return settings


@pytest.fixture(autouse=True)
async def _close_pools() -> AsyncIterator[None]:
    yield
    await _postgres.close_pools()


@pytest.fixture
def names(postgres_server: Server) -> Iterator[list[str]]:
    """Role names to drop at the end of the test, whatever happened."""
    made: list[str] = []
    yield made
    for name in made:
        postgres_server.sql(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def spec(provider: Provider[Any], **data: Any) -> BaseModel:
    return provider.Spec.model_validate({"connection": "db", **data})


async def converge(provider: Provider[Any], model: BaseModel) -> Plan:
    """One pass as the engine makes it: observe, plan, apply, verify empty."""
    plan = provider.plan(model, await provider.observe(model))
    if not plan.empty:
        await provider.apply(model, plan)
        after = provider.plan(model, await provider.observe(model))
        assert after.empty, after
    return plan


def role_row(server: Server, name: str) -> tuple[Any, ...] | None:
    rows = server.sql(
        "SELECT rolcanlogin, rolcreatedb, rolconnlimit, rolpassword, "
        "ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g "
        "ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1) "
        "FROM pg_authid r WHERE rolname = %s",
        (name,),
    )
    return rows[0] if rows else None


def can_log_in(server: Server, user: str, password: str) -> bool:
    try:
        psycopg.connect(
            host=server.host, port=server.port, user=user, password=password, dbname="postgres"
        ).close()
    except psycopg.OperationalError:
        return False
    return True


# PostgresRole


async def test_role_lifecycle(
    postgres_server: Server, settings: ProviderSettings, names: list[str]
) -> None:
    provider = PostgresRoleProvider(settings)
    names += ["app", "readers"]
    postgres_server.sql("CREATE ROLE readers")
    desired = spec(
        provider,
        name="app",
        login=True,
        createdb=True,
        connectionLimit=5,
        validUntil="2100-01-01T00:00:00Z",
        memberOf=["readers"],
        password=Sensitive("first-pass", "m1"),
    )
    plan = await converge(provider, desired)
    assert plan.action is Action.CREATE
    password_change = next(c for c in plan.changes if c.field == "/password")
    assert password_change.sensitive and password_change.after == SENSITIVE
    assert "first-pass" not in repr(plan)
    login, createdb, limit, stored, member_of = role_row(postgres_server, "app") or ()
    assert (login, createdb, limit, member_of) == (True, True, 5, ["readers"])
    assert stored.startswith("SCRAM-SHA-256$4096:") and "first-pass" not in stored
    assert can_log_in(postgres_server, "app", "first-pass")

    assert (await converge(provider, desired)).empty  # second pass: no-op

    postgres_server.sql("ALTER ROLE app NOCREATEDB CONNECTION LIMIT 3; REVOKE readers FROM app")
    drift = provider.plan(desired, await provider.observe(desired))
    assert {c.field for c in drift.changes} == {"/createdb", "/connectionLimit", "/memberOf"}
    await converge(provider, desired)
    assert role_row(postgres_server, "app")[:3] == (True, True, 5)  # type: ignore[index]

    updated = desired.model_copy(update={"createdb": False, "member_of": ()})
    plan = await converge(provider, updated)
    assert {c.field for c in plan.changes} == {"/createdb", "/memberOf"}
    assert role_row(postgres_server, "app")[1] is False  # type: ignore[index]
    assert role_row(postgres_server, "app")[4] == []  # type: ignore[index]

    await provider.delete(updated)
    assert role_row(postgres_server, "app") is None
    await provider.delete(updated)  # absent: not an error
    assert await provider.observe(updated) is None


async def test_unset_attributes_are_left_alone(
    postgres_server: Server, settings: ProviderSettings, names: list[str]
) -> None:
    """Adopting a role changes nothing the spec does not say (the superuser the
    connection logs in as stays one)."""
    provider = PostgresRoleProvider(settings)
    assert (await converge(provider, spec(provider, name="postgres", login=True))).empty
    names.append("solo")
    await converge(provider, spec(provider, name="solo"))
    assert role_row(postgres_server, "solo")[:3] == (False, False, -1)  # type: ignore[index]


async def test_password_drift_by_scram(
    postgres_server: Server, settings: ProviderSettings, names: list[str]
) -> None:
    provider = PostgresRoleProvider(settings)
    names.append("pw_role")
    desired = spec(provider, name="pw_role", login=True, password=Sensitive("wanted-pw", "m"))
    await converge(provider, desired)
    ours = role_row(postgres_server, "pw_role")[3]  # type: ignore[index]

    # the same password set by the server: a fresh salt, the same password, no drift
    postgres_server.sql("ALTER ROLE pw_role PASSWORD 'wanted-pw'")
    theirs = role_row(postgres_server, "pw_role")[3]  # type: ignore[index]
    assert theirs != ours and theirs.split("$")[1] != ours.split("$")[1]
    assert (await converge(provider, desired)).empty

    # another password out of band: drift, shown masked, healed
    postgres_server.sql("ALTER ROLE pw_role PASSWORD 'changed-by-hand'")
    drift = provider.plan(desired, await provider.observe(desired))
    assert [(c.field, c.before, c.after, c.sensitive) for c in drift.changes] == [
        ("/password", SENSITIVE, SENSITIVE, True)
    ]
    await converge(provider, desired)
    assert can_log_in(postgres_server, "pw_role", "wanted-pw")
    assert not can_log_in(postgres_server, "pw_role", "changed-by-hand")

    # removed out of band: drift too
    postgres_server.sql("ALTER ROLE pw_role PASSWORD NULL")
    assert not (await converge(provider, desired)).empty
    assert can_log_in(postgres_server, "pw_role", "wanted-pw")

    # a non-ASCII password hashes as the server hashes it (SASLprep)
    unicode_pw = desired.model_copy(update={"password": Sensitive("pässwörd \u210c", "u")})
    await converge(provider, unicode_pw)
    postgres_server.sql("ALTER ROLE pw_role PASSWORD 'pässwörd \u210c'")
    assert (await converge(provider, unicode_pw)).empty


async def test_the_password_never_reaches_the_server_log(
    postgres_server: Server, settings: ProviderSettings, names: list[str]
) -> None:
    names.append("logged")
    postgres_server.sql("ALTER ROLE postgres SET log_statement = 'all'")
    try:
        provider = PostgresRoleProvider(settings)
        desired = spec(provider, name="logged", login=True, password=Sensitive("zq-plain-9", "m"))
        await converge(provider, desired)
        await converge(
            provider, desired.model_copy(update={"password": Sensitive("zq-next-9", "n")})
        )
    finally:
        postgres_server.sql("ALTER ROLE postgres RESET log_statement")
    log = postgres_server.log.read_text()
    assert 'ALTER ROLE "logged" PASSWORD \'SCRAM-SHA-256$' in log
    assert "zq-plain-9" not in log and "zq-next-9" not in log


async def test_without_pg_authid_the_password_is_set_on_create_only(
    postgres_server: Server, names: list[str]
) -> None:
    names += ["manager", "managed"]
    postgres_server.sql("CREATE ROLE manager LOGIN CREATEROLE PASSWORD 'manager-pw'")
    settings = ProviderSettings()
    conn = connection(postgres_server, user="manager", password="manager-pw")
    settings.connections.install({"db": conn})
    provider = PostgresRoleProvider(settings)
    desired = spec(provider, name="managed", login=True, password=Sensitive("managed-pw", "m"))
    await converge(provider, desired)
    assert can_log_in(postgres_server, "managed", "managed-pw")
    observed = await provider.observe(desired)
    assert observed is not None and observed["password"] == "unknown"
    assert (await converge(provider, desired)).empty
    postgres_server.sql("ALTER ROLE managed NOLOGIN")
    assert not (await converge(provider, desired)).empty  # the rest is compared


async def test_hostile_role_names(
    postgres_server: Server, settings: ProviderSettings, names: list[str]
) -> None:
    provider = PostgresRoleProvider(settings)
    names += HOSTILE
    postgres_server.sql(sql.SQL("CREATE ROLE {}").format(sql.Identifier(HOSTILE[1])))
    specs = [
        spec(provider, name=n, login=True, password=Sensitive("p'w;--", "m"), memberOf=[HOSTILE[1]])
        for n in (HOSTILE[0], HOSTILE[2], HOSTILE[3])
    ]
    for one in specs:
        assert (await converge(provider, one)).action is Action.CREATE
        assert (await converge(provider, one)).empty
    assert role_row(postgres_server, "postgres") is not None
    for one in specs:
        assert role_row(postgres_server, one.name)[4] == [HOSTILE[1]]  # type: ignore[attr-defined,index]
        await provider.delete(one)
        assert role_row(postgres_server, one.name) is None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="1 to 63 bytes"):
        spec(provider, name="x" * 64)


def statements(server: Server, fragment: str) -> int:
    rows = server.sql(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE %s",
        (f"%{fragment}%",),
    )
    return int(rows[0][0])


async def test_one_query_per_kind_and_pass(
    postgres_server: Server, settings: ProviderSettings, names: list[str]
) -> None:
    roles = PostgresRoleProvider(settings)
    databases = PostgresDatabaseProvider(settings)
    grants = PostgresGrantProvider(settings)
    many = [f"bulk_{i}" for i in range(25)]
    names += many
    await roles.observe(spec(roles, name="warm"))  # the pool's first session and its fact
    postgres_server.sql("SELECT pg_stat_statements_reset()")
    role_specs = [spec(roles, name=n, login=True) for n in many]
    assert await roles.observe_many(role_specs) == [None] * len(many)
    db_specs = [spec(databases, name=n) for n in many]
    assert await databases.observe_many(db_specs) == [None] * len(many)
    grant_specs = [
        spec(grants, role=n, on="database", database="postgres", privileges=["CONNECT"])
        for n in many
    ]
    await grants.observe_many(grant_specs)
    assert statements(postgres_server, "rolconnlimit") == 1
    assert statements(postgres_server, "pg_database WHERE datname") == 1
    assert statements(postgres_server, "aclexplode") == 1


# PostgresDatabase


async def test_database_lifecycle(
    postgres_server: Server, settings: ProviderSettings, names: list[str]
) -> None:
    names += ["db_owner", "db_other"]
    postgres_server.sql("CREATE ROLE db_owner; CREATE ROLE db_other")
    provider = PostgresDatabaseProvider(settings)
    desired = spec(provider, name="app db", owner="db_owner", encoding="LATIN1", locale="C")
    assert (await converge(provider, desired)).action is Action.CREATE
    [row] = postgres_server.sql(
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype "
        "FROM pg_database WHERE datname = 'app db'"
    )
    assert row == ("db_owner", "LATIN1", "C", "C")
    assert (await converge(provider, desired)).empty

    postgres_server.sql('ALTER DATABASE "app db" OWNER TO db_other')
    drift = provider.plan(desired, await provider.observe(desired))
    assert [(c.field, c.before, c.after) for c in drift.changes] == [
        ("/owner", "db_other", "db_owner")
    ]
    await converge(provider, desired)

    with pytest.raises(
        PermanentError, match="encoding LATIN1 -> UTF8 cannot change after creation"
    ):
        provider.plan(
            desired.model_copy(update={"encoding": "UTF8"}), await provider.observe(desired)
        )

    # in use: not dropped, unless force
    with postgres_server.connect("app db"):
        with pytest.raises(TemporaryError, match="1 open session"):
            await provider.delete(desired)
        await provider.delete(desired.model_copy(update={"force": True}))
    assert await provider.observe(desired) is None
    await provider.delete(desired)


async def test_the_connection_database_is_never_dropped(settings: ProviderSettings) -> None:
    provider = PostgresDatabaseProvider(settings)
    with pytest.raises(PermanentError, match="refusing to drop it"):
        await provider.delete(spec(provider, name="postgres"))


# PostgresGrant


async def test_grants_lifecycle(
    postgres_server: Server, settings: ProviderSettings, names: list[str]
) -> None:
    grantee, other = HOSTILE[0], HOSTILE[2]
    names.extend([grantee, other])
    schema, table = HOSTILE[1], HOSTILE[3]
    for role in (grantee, other):
        postgres_server.sql(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    postgres_server.sql("DROP DATABASE IF EXISTS grants_db")
    postgres_server.sql("CREATE DATABASE grants_db")
    postgres_server.sql(
        sql.SQL(
            "CREATE SCHEMA {s}; CREATE TABLE {s}.{t} (id int); CREATE TABLE {s}.other (x int)"
        ).format(s=sql.Identifier(schema), t=sql.Identifier(table)),
        dbname="grants_db",
    )
    provider = PostgresGrantProvider(settings)
    on_db = spec(provider, role=grantee, on="database", database="grants_db", privileges=["ALL"])
    on_schema = spec(
        provider,
        role=grantee,
        on="schema",
        database="grants_db",
        schema=schema,
        privileges=["usage"],
    )
    on_table = spec(
        provider,
        role=grantee,
        on="table",
        database="grants_db",
        schema=schema,
        table=table,
        privileges=["SELECT", "INSERT"],
    )
    on_all = spec(
        provider,
        role=grantee,
        on="allTablesInSchema",
        database="grants_db",
        schema=schema,
        privileges=["SELECT"],
    )
    everything = [on_db, on_schema, on_table, on_all]
    try:
        for one in everything:
            assert (await converge(provider, one)).action is Action.CREATE
        assert [
            provider.plan(s, o).empty
            for s, o in zip(everything, await provider.observe_many(everything), strict=True)
        ] == [True] * 4

        def has(privilege: str, what: str) -> bool:
            query = sql.SQL("SELECT has_table_privilege({}, {}, {})").format(
                sql.Literal(grantee), sql.Literal(what), sql.Literal(privilege)
            )
            return bool(postgres_server.sql(query, dbname="grants_db")[0][0])

        qualified = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        table_text = qualified.as_string()
        assert has("INSERT", table_text)

        # drift out of band: a revoked privilege, a new table
        postgres_server.sql(
            sql.SQL("REVOKE INSERT ON {} FROM {}").format(qualified, sql.Identifier(grantee)),
            dbname="grants_db",
        )
        postgres_server.sql(
            sql.SQL("CREATE TABLE {}.later (y int)").format(sql.Identifier(schema)),
            dbname="grants_db",
        )
        plans = [
            provider.plan(s, o)
            for s, o in zip(everything, await provider.observe_many(everything), strict=True)
        ]
        assert [p.empty for p in plans] == [True, True, False, False]
        assert [(c.before, c.after) for c in plans[2].changes] == [
            (["SELECT"], ["SELECT", "INSERT"])
        ]
        for one in everything:
            await converge(provider, one)
        assert has("INSERT", table_text)

        # extra privileges granted by another grantor are not drift
        postgres_server.sql(
            sql.SQL(
                "GRANT USAGE ON SCHEMA {s} TO {o}; GRANT DELETE ON {t} TO {o} WITH GRANT OPTION;"
                " SET ROLE {o}; GRANT DELETE ON {t} TO {g}; RESET ROLE"
            ).format(
                s=sql.Identifier(schema),
                t=qualified,
                o=sql.Identifier(other),
                g=sql.Identifier(grantee),
            ),
            dbname="grants_db",
        )
        assert (await converge(provider, on_table)).empty

        for one in reversed(everything):
            await provider.delete(one)
            assert await provider.observe(one) is None
        assert not has("SELECT", table_text) and has("DELETE", table_text)
    finally:
        await _postgres.close_pools()
        postgres_server.sql("DROP DATABASE IF EXISTS grants_db WITH (FORCE)")
        postgres_server.sql(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(grantee)))


def _acl(server: Server, schema: str) -> set[tuple[str, str, str, str]]:
    """(relation, grantee, privilege, grantor) of every relation of `schema`."""
    rows = server.sql(
        "SELECT c.relname, a.grantee::regrole::text, a.privilege_type, a.grantor::regrole::text"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,"
        " aclexplode(c.relacl) a WHERE n.nspname = %s",
        (schema,),
    )
    return {(str(r), str(g), str(p), str(by)) for r, g, p, by in rows}


async def test_grant_shrink_revokes_extras(
    postgres_server: Server, settings: ProviderSettings, names: list[str]
) -> None:
    """Privileges dropped from a spec are revoked, also on prune by the stored
    (shrunk) spec; the connection is a superuser and the tables belong to
    another role, so PostgreSQL records the owner as the grantor (decision
    0091); a privilege from another grantor stays, and is not drift."""
    grantee, owner, other = "shrink_grantee", "shrink_owner", "shrink_other"
    names.extend([grantee, owner, other])
    for role in (grantee, owner, other):
        postgres_server.sql(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    postgres_server.sql(
        "CREATE SCHEMA shrink AUTHORIZATION shrink_owner;"
        " CREATE TABLE shrink.t (id int); CREATE TABLE shrink.u (id int);"
        " ALTER TABLE shrink.t OWNER TO shrink_owner; ALTER TABLE shrink.u OWNER TO shrink_owner;"
        " GRANT USAGE ON SCHEMA shrink TO shrink_other;"
        " GRANT DELETE ON shrink.t TO shrink_other WITH GRANT OPTION;"
        " SET ROLE shrink_other; GRANT DELETE ON shrink.t TO shrink_grantee; RESET ROLE"
    )
    provider = PostgresGrantProvider(settings)
    table = {"role": grantee, "on": "table", "schema": "shrink", "table": "t"}
    both = spec(provider, **table, privileges=["SELECT", "INSERT"])
    select = spec(provider, **table, privileges=["SELECT"])
    kept = ("t", grantee, "DELETE", other)
    try:
        # the other grantor's DELETE is not ours: nothing of the grant is in place
        assert await provider.observe(both) is None
        assert (await converge(provider, both)).action is Action.CREATE
        assert {("t", grantee, p, owner) for p in ("SELECT", "INSERT")} | {kept} == {
            entry for entry in _acl(postgres_server, "shrink") if entry[1] == grantee
        }

        # the spec shrinks: INSERT is revoked, one change naming it
        plan = provider.plan(select, await provider.observe(select))
        assert (plan.action, plan.changes) == (
            Action.UPDATE,
            (Change("/privileges/INSERT", True, False),),
        )
        await converge(provider, select)
        assert {e for e in _acl(postgres_server, "shrink") if e[1] == grantee} == {
            ("t", grantee, "SELECT", owner),
            kept,
        }

        # a superuser's grant by hand is recorded as the owner's: drift, healed
        postgres_server.sql("GRANT UPDATE, TRUNCATE ON shrink.t TO shrink_grantee")
        plan = provider.plan(select, await provider.observe(select))
        assert [c.field for c in plan.changes] == ["/privileges/UPDATE", "/privileges/TRUNCATE"]
        await converge(provider, select)

        # missing and extra at once: one apply revokes and grants
        postgres_server.sql("REVOKE SELECT ON shrink.t FROM shrink_grantee")
        postgres_server.sql("GRANT REFERENCES ON shrink.t TO shrink_grantee")
        plan = provider.plan(select, await provider.observe(select))
        assert plan.changes == (
            Change("/privileges", [], ["SELECT"]),
            Change("/privileges/REFERENCES", True, False),
        )
        await converge(provider, select)

        # prune after a shrink whose update never ran: the stored spec is the
        # shrunk one, and removing it revokes INSERT too
        await converge(provider, both)
        await provider.delete(select)
        assert await provider.observe(both) is None
        assert {e for e in _acl(postgres_server, "shrink") if e[1] == grantee} == {kept}

        # all tables of the schema: an extra privilege on any of them is revoked
        every = {"role": grantee, "on": "allTablesInSchema", "schema": "shrink"}
        await converge(provider, spec(provider, **every, privileges=["SELECT", "UPDATE"]))
        shrunk = spec(provider, **every, privileges=["SELECT"])
        plan = provider.plan(shrunk, await provider.observe(shrunk))
        assert plan.changes == (Change("/privileges/UPDATE", True, False),)
        await converge(provider, shrunk)
        assert {e for e in _acl(postgres_server, "shrink") if e[1] == grantee} == {
            ("t", grantee, "SELECT", owner),
            ("u", grantee, "SELECT", owner),
            kept,
        }
        await provider.delete(shrunk)
        assert {e for e in _acl(postgres_server, "shrink") if e[1] == grantee} == {kept}
    finally:
        postgres_server.sql("DROP SCHEMA IF EXISTS shrink CASCADE")


def test_grant_specs_are_checked() -> None:
    provider = PostgresGrantProvider(ProviderSettings())
    assert spec(
        provider, role="r", on="database", database="d", privileges=["temp", "connect"]
    ).privileges == ("CONNECT", "TEMPORARY")  # type: ignore[attr-defined]
    for bad, message in [
        ({"on": "table", "schema": "s", "privileges": ["SELECT"]}, "needs table"),
        (
            {"on": "database", "database": "d", "schema": "s", "privileges": ["CONNECT"]},
            "takes no schema",
        ),
        ({"on": "schema", "schema": "s", "privileges": ["SELECT"]}, "not a privilege on a schema"),
        (
            {"on": "database", "database": "d", "privileges": ["CONNECT; DROP TABLE x"]},
            "not a privilege",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            spec(provider, role="r", **bad)


# a bad connection


async def test_connection_errors(postgres_server: Server, names: list[str]) -> None:
    wrong = connection(postgres_server, password="not-the-password")
    with pytest.raises(PermanentError, match="password authentication failed") as refused:
        await _postgres.ping(wrong)
    assert "not-the-password" not in str(refused.value)
    with pytest.raises(PermanentError, match='database "nowhere" does not exist'):
        await _postgres.ping(connection(postgres_server, database="nowhere"))

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(TemporaryError, match="cannot connect"):
        await _postgres.ping(connection(postgres_server, port=port))

    # a server that accepts the TCP connection and never answers: a timeout
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mute = connection(postgres_server, port=silent.getsockname()[1], connectTimeout=1)
        started = asyncio.get_running_loop().time()
        with pytest.raises(TemporaryError, match=r"timeout|timed out|cannot connect"):
            await _postgres.ping(mute)
        assert asyncio.get_running_loop().time() - started < 5

    settings = ProviderSettings()
    settings.connections.install({"db": wrong})
    provider = PostgresRoleProvider(settings)
    with pytest.raises(PermanentError, match="password authentication failed"):
        await provider.observe(spec(provider, name="anyone"))
    missing = PostgresRoleProvider(ProviderSettings())
    with pytest.raises(PermanentError, match="connection 'db' is not declared"):
        await missing.observe(spec(missing, name="anyone"))
