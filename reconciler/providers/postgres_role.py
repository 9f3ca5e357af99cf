"""`PostgresRole`: a role of a PostgreSQL server, its attributes, password and
memberships.

    kind: PostgresRole
    metadata: {name: app}
    spec:
      connection: main-db
      name: app
      login: true
      password: {valueFrom: {file: /run/secrets/app-db}}
      memberOf: [readers]

An attribute left out of the spec is not managed: it keeps what the server has
(PostgreSQL's default on create), so adopting a role never flips what nobody
declared (see docs/decisions/0083). `memberOf`, when given, is the whole list.

The password is never stored and never sent as text: it is set as a SCRAM-SHA-256
verifier computed here, and compared by recomputing the server's verifier from
the desired password with its salt and iteration count (read from `pg_authid`,
which needs a superuser connection). Without that access the password is set on
create and not compared after (docs/kinds/postgres.md). Plans show a password change masked.

All roles of one connection are observed with one query.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from reconciler.model import (
    NO_CHANGES,
    Action,
    Change,
    Observed,
    Plan,
    PrepareContext,
    SecretRef,
)
from reconciler.providers import _postgres
from reconciler.providers._postgres import PgName, PostgresProvider
from reconciler.providers.connection import PostgresConnection

ATTRIBUTES = {
    "superuser": ("rolsuper", "SUPERUSER"),
    "login": ("rolcanlogin", "LOGIN"),
    "inherit": ("rolinherit", "INHERIT"),
    "createdb": ("rolcreatedb", "CREATEDB"),
    "createrole": ("rolcreaterole", "CREATEROLE"),
    "replication": ("rolreplication", "REPLICATION"),
    "bypassrls": ("rolbypassrls", "BYPASSRLS"),
}
"""Spec field -> (pg_authid column, keyword of CREATE/ALTER ROLE)."""


class PostgresRoleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    connection: str = Field(min_length=1)
    name: PgName
    login: bool | None = None
    password: SecretRef | None = None
    superuser: bool | None = None
    inherit: bool | None = None
    createdb: bool | None = None
    createrole: bool | None = None
    replication: bool | None = None
    bypassrls: bool | None = None
    connection_limit: int | None = Field(default=None, ge=-1, alias="connectionLimit")
    valid_until: AwareDatetime | Literal["infinity"] | None = Field(
        default=None, alias="validUntil"
    )
    member_of: tuple[PgName, ...] | None = Field(default=None, alias="memberOf")

    @field_validator("member_of")
    @classmethod
    def _unique(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if len(set(value)) != len(value):
            raise ValueError("expected each role once in memberOf")
        return tuple(sorted(value))


def _epoch(value: datetime | str | None) -> float | None:
    """validUntil as seconds since the epoch; None and infinity both mean never."""
    if value is None or value == "infinity":
        return None
    assert isinstance(value, datetime)
    return value.timestamp()


class PostgresRoleProvider(PostgresProvider[PostgresRoleSpec]):
    kind = "PostgresRole"
    Spec = PostgresRoleSpec
    summary = "A PostgreSQL role: login, password (SCRAM), attributes, memberships."

    def prepare(self, spec: PostgresRoleSpec, ctx: PrepareContext) -> PostgresRoleSpec:
        if isinstance(spec.password, dict):
            password = ctx.secret(spec.password, ("password",))
            return spec.model_copy(update={"password": password})
        return spec

    def describe(self, spec: PostgresRoleSpec) -> str:
        return f"role {spec.name} on {spec.connection}"

    async def observe_many(self, specs: Sequence[PostgresRoleSpec]) -> list[Observed | None]:
        observed: list[Observed | None] = [None] * len(specs)
        for conn, indexes in self.groups(specs):
            rows = await _roles(conn, sorted({specs[i].name for i in indexes}))
            await _check_passwords(
                [(specs[i], rows[specs[i].name]) for i in indexes if specs[i].name in rows]
            )
            for i in indexes:
                row = rows.get(specs[i].name)
                observed[i] = None if row is None else _observed(specs[i], row)
        return observed

    def plan(self, spec: PostgresRoleSpec, observed: Observed | None) -> Plan:
        wanted = _wanted(spec)
        if observed is None:
            changes = [Change("/name", None, spec.name)]
            changes += [Change(f"/{f}", None, v) for f, v in wanted.items()]
            if spec.password is not None:
                changes.append(Change.masked("/password", absent=True))
            return Plan(Action.CREATE, tuple(changes))
        changes = [Change(f"/{f}", observed[f], v) for f, v in wanted.items() if observed[f] != v]
        if spec.password is not None and observed["password"] in ("absent", "differs"):
            changes.append(Change.masked("/password"))
        return Plan(Action.UPDATE, tuple(changes)) if changes else NO_CHANGES

    async def apply(self, spec: PostgresRoleSpec, plan: Plan) -> None:
        conn = self.conn(spec)
        fields = {c.field.lstrip("/") for c in plan.changes}
        options = _options(spec, fields)
        role = sql.Identifier(spec.name)
        what = f"{'create' if plan.action is Action.CREATE else 'alter'} role {spec.name!r}"
        try:
            async with _postgres.session(conn) as s, s.transaction():
                if plan.action is Action.CREATE:
                    await s.execute(sql.SQL("CREATE ROLE {} {}").format(role, options))
                elif list(options):
                    await s.execute(sql.SQL("ALTER ROLE {} {}").format(role, options))
                if "memberOf" in fields and spec.member_of is not None:
                    await _memberships(s, spec.name, spec.member_of)
        except psycopg.Error as exc:
            raise _postgres.operation_error(conn, what, exc) from None

    async def delete(self, spec: PostgresRoleSpec) -> None:
        conn = self.conn(spec)
        try:
            async with _postgres.session(conn) as s:
                await s.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(spec.name)))
        except psycopg.Error as exc:
            raise _postgres.operation_error(conn, f"drop role {spec.name!r}", exc) from None


def _wanted(spec: PostgresRoleSpec) -> dict[str, Any]:
    """The managed fields of `spec` as observations show them, by JSON pointer name."""
    wanted: dict[str, Any] = {
        f: getattr(spec, f) for f in ATTRIBUTES if getattr(spec, f) is not None
    }
    if spec.connection_limit is not None:
        wanted["connectionLimit"] = spec.connection_limit
    if spec.valid_until is not None:
        wanted["validUntil"] = _epoch(spec.valid_until)
    if spec.member_of is not None:
        wanted["memberOf"] = list(spec.member_of)
    return wanted


_COLUMNS = [column for column, _ in ATTRIBUTES.values()]

_SELECT = """
SELECT r.rolname, {columns}, r.rolconnlimit,
       extract(epoch FROM r.rolvaliduntil)::float8, {password},
       ARRAY(SELECT g.rolname::text FROM pg_catalog.pg_auth_members m
             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1)
FROM pg_catalog.{table} r WHERE r.rolname = ANY(%s)
"""


async def _roles(conn: PostgresConnection, names: list[str]) -> dict[str, tuple[Any, ...]]:
    """One query for every named role of `conn`; rows by name. The password column
    is the verifier from pg_authid when the connection may read it (asked once per
    pool); pg_roles shows '********' whether a password is set or not, so without
    that access it is NULL and the password is not compared."""
    facts = _postgres.facts(conn)
    try:
        async with _postgres.session(conn) as s:
            if "authid" not in facts:
                cur = await s.execute(
                    "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')"
                )
                row = await cur.fetchone()
                facts["authid"] = bool(row and row[0])
            readable = facts["authid"]
            query = _SELECT.format(
                columns=", ".join(f"r.{c}" for c in _COLUMNS),
                password="r.rolpassword" if readable else "NULL::text",
                table="pg_authid" if readable else "pg_roles",
            )
            cur = await s.execute(query, (names,))
            rows = await cur.fetchall()
    except psycopg.Error as exc:
        raise _postgres.operation_error(conn, "read roles", exc) from None
    return {row[0]: (*row, readable) for row in rows}


def _observed(spec: PostgresRoleSpec, row: tuple[Any, ...]) -> Observed:
    """A role as plans compare it; the password only as a verdict, never the
    verifier: absent, current, differs (the verifier is not of the desired
    password), unknown (pg_authid unreadable), unmanaged (the spec sets none)."""
    flags = row[1 : 1 + len(ATTRIBUTES)]
    limit, until, stored, members, readable = row[1 + len(ATTRIBUTES) :]
    observed: dict[str, Any] = dict(zip(ATTRIBUTES, flags, strict=True))
    observed["connectionLimit"] = limit
    observed["validUntil"] = None if until is None or math.isinf(until) else until
    observed["memberOf"] = list(members)
    if spec.password is None:
        observed["password"] = "unmanaged"
    elif not readable:
        observed["password"] = "unknown"
    elif not stored:
        observed["password"] = "absent"
    else:
        same = _verdicts.get(_verdict_key(spec, stored))
        observed["password"] = "current" if same else "differs"
    return observed


_verdicts: dict[tuple[str, str, bytes], bool] = {}
"""Whether a stored verifier is of a desired password, by (role, verifier, keyed
digest of the password): the verifier changes whenever the password is set, so a
verdict never goes stale, and each costs a PBKDF2 of 4096 rounds (about 2 ms)
that a no-op pass over many roles would otherwise pay per role."""
_VERDICTS_MAX = 100_000
_VERDICT_KEY = secrets.token_bytes(32)


def _verdict_key(spec: PostgresRoleSpec, stored: str) -> tuple[str, str, bytes]:
    digest = hmac.new(_VERDICT_KEY, str(spec.password).encode(), hashlib.sha256).digest()
    return (spec.name, stored, digest)


async def _check_passwords(items: list[tuple[PostgresRoleSpec, tuple[Any, ...]]]) -> None:
    """Compute the verdicts not known yet, in a thread (PBKDF2 releases the GIL
    and must not hold the event loop)."""
    todo = [
        (key, str(spec.password), row[-3])
        for spec, row in items
        if spec.password is not None
        and row[-1]
        and row[-3]
        and (key := _verdict_key(spec, row[-3])) not in _verdicts
    ]
    if not todo:
        return
    results = await asyncio.to_thread(
        lambda: [_postgres.password_matches(pw, stored, key[0]) for key, pw, stored in todo]
    )
    if len(_verdicts) + len(todo) > _VERDICTS_MAX:
        _verdicts.clear()
    for (key, _, _), same in zip(todo, results, strict=True):
        _verdicts[key] = bool(same)


def _options(spec: PostgresRoleSpec, fields: set[str]) -> sql.Composed:
    """The role options of CREATE/ALTER ROLE for the planned `fields`."""
    parts: list[sql.Composable] = []
    for field, (_, keyword) in ATTRIBUTES.items():
        value = getattr(spec, field)
        if field in fields and value is not None:
            parts.append(sql.SQL(keyword if value else f"NO{keyword}"))
    if "connectionLimit" in fields and spec.connection_limit is not None:
        parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(spec.connection_limit)))
    if "validUntil" in fields and spec.valid_until is not None:
        until = spec.valid_until
        text = until if isinstance(until, str) else until.isoformat()
        parts.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(text)))
    if "password" in fields and spec.password is not None:
        # the verifier, never the text: the server stores it as is, and its logs
        # (log_statement) show only what it would store anyway
        verifier = _postgres.scram_verifier(str(spec.password))
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(verifier)))
    return sql.SQL(" ").join(parts)


async def _memberships(s: psycopg.AsyncConnection[Any], member: str, wanted: Sequence[str]) -> None:
    """Make `member`'s direct memberships exactly `wanted`."""
    cur = await s.execute(
        "SELECT g.rolname::text FROM pg_catalog.pg_auth_members m"
        " JOIN pg_catalog.pg_roles g ON g.oid = m.roleid"
        " JOIN pg_catalog.pg_roles r ON r.oid = m.member WHERE r.rolname = %s",
        (member,),
    )
    have = {row[0] for row in await cur.fetchall()}
    target = sql.Identifier(member)
    for group in sorted(set(wanted) - have):
        await s.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), target))
    for group in sorted(have - set(wanted)):
        await s.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(group), target))


__all__ = ["PostgresRoleProvider", "PostgresRoleSpec"]
