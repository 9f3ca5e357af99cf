"""`PostgresDatabase`: a database of a PostgreSQL server, its owner, and the
encoding and locale it is created with.

    kind: PostgresDatabase
    metadata: {name: appdb}
    spec: {connection: main-db, name: appdb, owner: app, encoding: UTF8, locale: C.UTF-8}

Encoding, locale and template are fixed when the database is created: a spec
that changes the first two on an existing database fails permanently with a
message saying so (the template is not recorded by the server, so it only
matters on create). CREATE DATABASE runs outside a transaction (the pool's
sessions are in autocommit mode).

The engine deletes only databases reconciler created (adopted ones are released);
even then a database with sessions open is not dropped (a TemporaryError: try
again when they are gone) unless `force: true`, which ends them
(DROP DATABASE ... WITH (FORCE), PostgreSQL 13 and later).

All databases of one connection are observed with one query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from reconciler.model import (
    NO_CHANGES,
    Action,
    Change,
    Observed,
    PermanentError,
    Plan,
    TemporaryError,
)
from reconciler.providers import _postgres
from reconciler.providers._postgres import PgName, PostgresProvider
from reconciler.providers.connection import PostgresConnection


class PostgresDatabaseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    connection: str = Field(min_length=1)
    name: PgName
    owner: PgName | None = None
    """A role; left out: whoever the server makes owner (the connection's user)."""
    encoding: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    locale: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    """LC_COLLATE and LC_CTYPE at once."""
    template: PgName | None = None
    """Copied on create; defaults to template0 when encoding or locale is set
    (template1 may have others), else the server's default (template1)."""
    force: bool = False
    """On prune, end the database's sessions instead of waiting for them."""


def _norm_encoding(value: str) -> str:
    return value.upper().replace("-", "").replace("_", "")


def _norm_locale(value: str) -> str:
    """`C.UTF-8` and `C.utf8` name the same locale."""
    base, dot, codeset = value.partition(".")
    return base + dot + codeset.lower().replace("-", "")


class PostgresDatabaseProvider(PostgresProvider[PostgresDatabaseSpec]):
    kind = "PostgresDatabase"
    Spec = PostgresDatabaseSpec
    summary = "A PostgreSQL database: owner; encoding, locale and template on create."

    def describe(self, spec: PostgresDatabaseSpec) -> str:
        return f"database {spec.name} on {spec.connection}"

    async def observe_many(self, specs: Sequence[PostgresDatabaseSpec]) -> list[Observed | None]:
        observed: list[Observed | None] = [None] * len(specs)
        for conn, indexes in self.groups(specs):
            rows = await _databases(conn, sorted({specs[i].name for i in indexes}))
            for i in indexes:
                observed[i] = rows.get(specs[i].name)
        return observed

    def plan(self, spec: PostgresDatabaseSpec, observed: Observed | None) -> Plan:
        if observed is None:
            changes = [Change("/name", None, spec.name)]
            changes += [
                Change(f"/{field}", None, value)
                for field in ("owner", "encoding", "locale", "template")
                if (value := getattr(spec, field)) is not None
            ]
            return Plan(Action.CREATE, tuple(changes))
        fixed = []
        if spec.encoding is not None and _norm_encoding(spec.encoding) != _norm_encoding(
            observed["encoding"]
        ):
            fixed.append(f"encoding {observed['encoding']} -> {spec.encoding}")
        if spec.locale is not None and {_norm_locale(spec.locale)} != {
            _norm_locale(observed["lcCollate"]),
            _norm_locale(observed["lcCtype"]),
        }:
            fixed.append(f"locale {observed['lcCollate']} -> {spec.locale}")
        if fixed:
            raise PermanentError(
                f"database {spec.name!r}: {', '.join(fixed)} cannot change after creation "
                "(dump and restore into a new database, or set the spec back)"
            )
        if spec.owner is not None and observed["owner"] != spec.owner:
            return Plan(Action.UPDATE, (Change("/owner", observed["owner"], spec.owner),))
        return NO_CHANGES

    async def apply(self, spec: PostgresDatabaseSpec, plan: Plan) -> None:
        conn = self.conn(spec)
        name = sql.Identifier(spec.name)
        if plan.action is Action.CREATE:
            statement = sql.SQL("CREATE DATABASE {} {}").format(name, _create_options(spec))
            what = f"create database {spec.name!r}"
        else:
            statement = sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                name, sql.Identifier(str(spec.owner))
            )
            what = f"change the owner of database {spec.name!r}"
        try:
            async with _postgres.session(conn) as s:
                await s.execute(statement)
        except psycopg.Error as exc:
            raise _postgres.operation_error(conn, what, exc) from None

    async def delete(self, spec: PostgresDatabaseSpec) -> None:
        conn = self.conn(spec)
        if spec.name == conn.database:
            raise PermanentError(
                f"database {spec.name!r} is the one connection {spec.connection!r} uses; "
                "refusing to drop it (point the connection at another database first)"
            )
        name = sql.Identifier(spec.name)
        what = f"drop database {spec.name!r}"
        await _postgres.close_idle(conn, spec.name)
        try:
            async with _postgres.session(conn) as s:
                if not spec.force:
                    cur = await s.execute(
                        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = %s",
                        (spec.name,),
                    )
                    row = await cur.fetchone()
                    sessions = int(row[0]) if row else 0
                    if sessions:
                        raise TemporaryError(
                            f"database {spec.name!r} has {sessions} open session(s); not "
                            "dropping it while in use (set force: true to end them)"
                        )
                    await s.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(name))
                else:
                    await s.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        except psycopg.Error as exc:
            raise _postgres.operation_error(conn, what, exc) from None


def _create_options(spec: PostgresDatabaseSpec) -> sql.Composed:
    parts: list[sql.Composable] = []
    if spec.owner is not None:
        parts.append(sql.SQL("OWNER {}").format(sql.Identifier(spec.owner)))
    template = spec.template
    if template is None and (spec.encoding is not None or spec.locale is not None):
        template = "template0"
    if template is not None:
        parts.append(sql.SQL("TEMPLATE {}").format(sql.Identifier(template)))
    if spec.encoding is not None:
        parts.append(sql.SQL("ENCODING {}").format(sql.Literal(spec.encoding)))
    if spec.locale is not None:
        parts.append(sql.SQL("LOCALE {}").format(sql.Literal(spec.locale)))
    return sql.SQL(" ").join(parts)


async def _databases(conn: PostgresConnection, names: list[str]) -> dict[str, Observed]:
    """One query for every named database of `conn`."""
    try:
        async with _postgres.session(conn) as s:
            cur = await s.execute(
                "SELECT datname::text, pg_catalog.pg_get_userbyid(datdba)::text,"
                " pg_catalog.pg_encoding_to_char(encoding)::text, datcollate::text,"
                " datctype::text FROM pg_catalog.pg_database WHERE datname = ANY(%s)",
                (names,),
            )
            rows = await cur.fetchall()
    except psycopg.Error as exc:
        raise _postgres.operation_error(conn, "read databases", exc) from None
    found: dict[str, Observed] = {}
    for name, owner, encoding, collate, ctype in rows:
        observed: dict[str, Any] = {
            "owner": owner,
            "encoding": encoding,
            "lcCollate": collate,
            "lcCtype": ctype,
        }
        found[name] = observed
    return found


__all__ = ["PostgresDatabaseProvider", "PostgresDatabaseSpec"]
