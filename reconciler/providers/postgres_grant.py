"""`PostgresGrant`: privileges on a database, a schema, all tables of a schema,
or one table, granted to a role.

    kind: PostgresGrant
    metadata: {name: app-reads-orders}
    spec:
      connection: main-db
      role: app
      privileges: [SELECT, INSERT]
      on: table            # database | schema | allTablesInSchema | table
      database: appdb      # the object (on: database), else where the schema is
      schema: public
      table: orders

A grant manages the privileges reconciler's own grants show up under: the
role's direct ACL entries on the object (not through PUBLIC or a role it
belongs to) whose grantor is the one PostgreSQL records for the connection's
user. That is the object's owner when the user has the owner's privileges (a
superuser, the owner, a member of the owner role: PostgreSQL then grants and
revokes "as the owner"), else the user itself (decision 0091). Of those, the
spec's privileges are exactly what the role holds: a missing one is drift, and
so is an extra one (granted by hand or left by an older spec), which healing
revokes. Privileges from other grantors are neither reported nor touched, nor
are the owner's own privileges when the grantee owns the object. For
`allTablesInSchema` a spec privilege counts as held when every table, view,
materialized view and foreign table of the schema grants it (a table created
later is drift, and healing grants it), and so does an extra one.

A grant that found none of its privileges in place counts as created, and its
removal revokes all it manages: the spec's privileges and the extras in place
(as this user, REVOKE removes only the grants recorded under its grantor). One
found already in place is adopted and released untouched on removal.

Grants are observed with one query per session: one for all grants on databases
(and on objects of the connection's database), one per other database named.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from reconciler.model import (
    NO_CHANGES,
    Action,
    Change,
    Observed,
    Plan,
    TemporaryError,
)
from reconciler.providers import _postgres
from reconciler.providers._postgres import PgName, PostgresProvider
from reconciler.providers.connection import PostgresConnection

On = Literal["database", "schema", "allTablesInSchema", "table"]

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
PRIVILEGES: dict[str, tuple[str, ...]] = {
    "database": ("CONNECT", "CREATE", "TEMPORARY"),
    "schema": ("CREATE", "USAGE"),
    "allTablesInSchema": TABLE_PRIVILEGES,
    "table": TABLE_PRIVILEGES,
}
"""The privileges each kind of object takes (PostgreSQL 15), as pg_catalog
spells them; `ALL` stands for all of them, `TEMP` for TEMPORARY."""

_UNDEFINED = {"42704", "42P01", "3F000", "3D000"}
"""undefined object, table, schema, database: nothing left to revoke."""


class PostgresGrantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    connection: str = Field(min_length=1)
    role: PgName
    on: On
    privileges: tuple[str, ...] = Field(min_length=1)
    database: PgName | None = None
    schema_: PgName | None = Field(default=None, alias="schema")
    table: PgName | None = None

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        """YAML 1.1 reads an unquoted `on:` key as the boolean true: take it as `on`."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("privileges")
    @classmethod
    def _privileges(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        """Upper case, TEMP spelled TEMPORARY, ALL expanded, in the table's order."""
        on = info.data.get("on")
        if on is None:
            return value  # `on` itself is invalid: reported on its own
        valid = PRIVILEGES[on]
        wanted: set[str] = set()
        for item in value:
            name = " ".join(item.upper().split())
            name = {"TEMP": "TEMPORARY", "ALL PRIVILEGES": "ALL"}.get(name, name)
            if name == "ALL":
                wanted.update(valid)
            elif name in valid:
                wanted.add(name)
            else:
                raise ValueError(
                    f"{item!r} is not a privilege on a {on}; expected some of "
                    f"{', '.join(valid)} or ALL"
                )
        return tuple(p for p in valid if p in wanted)

    @model_validator(mode="after")
    def _object(self) -> PostgresGrantSpec:
        need = {
            "database": {"database"},
            "schema": {"schema"},
            "allTablesInSchema": {"schema"},
            "table": {"schema", "table"},
        }[self.on]
        allowed = need | ({"database"} if self.on != "database" else set())
        named = (("database", self.database), ("schema", self.schema_), ("table", self.table))
        given = {n for n, v in named if v}
        if need - given:
            raise ValueError(f"on: {self.on} needs {', '.join(sorted(need - given))}")
        if given - allowed:
            raise ValueError(f"on: {self.on} takes no {', '.join(sorted(given - allowed))}")
        return self


class PostgresGrantProvider(PostgresProvider[PostgresGrantSpec]):
    kind = "PostgresGrant"
    Spec = PostgresGrantSpec
    summary = "Privileges on a PostgreSQL database, schema or tables, granted to a role."

    def describe(self, spec: PostgresGrantSpec) -> str:
        return f"{', '.join(spec.privileges)} on {_object_text(spec)} to {spec.role}"

    def _target(self, spec: PostgresGrantSpec) -> PostgresConnection:
        """The session a grant needs: schemas and tables live in one database."""
        conn = self.conn(spec)
        if spec.on == "database" or spec.database in (None, conn.database):
            return conn
        return conn.model_copy(update={"database": spec.database})

    async def observe_many(self, specs: Sequence[PostgresGrantSpec]) -> list[Observed | None]:
        observed: list[Observed | None] = [None] * len(specs)
        for conn, indexes in self.groups(specs, self._target):
            found = await _held(conn, [specs[i] for i in indexes])
            for i, held in zip(indexes, found, strict=True):
                mine = held.managed(specs[i])
                observed[i] = {"privileges": mine} if mine else None
        return observed

    def plan(self, spec: PostgresGrantSpec, observed: Observed | None) -> Plan:
        wanted = list(spec.privileges)
        if observed is None:
            return Plan(Action.CREATE, (Change("/privileges", None, wanted),))
        present = set(observed["privileges"])
        held = [p for p in wanted if p in present]
        changes = [Change("/privileges", held, wanted)] if held != wanted else []
        # one change per privilege to revoke, so a plan names each
        changes += [
            Change(f"/privileges/{p}", True, False)
            for p in PRIVILEGES[spec.on]
            if p in present and p not in wanted
        ]
        return Plan(Action.UPDATE, tuple(changes)) if changes else NO_CHANGES

    async def apply(self, spec: PostgresGrantSpec, plan: Plan) -> None:
        conn = self._target(spec)
        missing, extra = _missing_and_extra(spec, plan)
        role = sql.Identifier(spec.role)
        statements: list[sql.Composed] = []
        if extra:
            statements.append(
                sql.SQL("REVOKE {} ON {} FROM {}").format(_keywords(extra), _object(spec), role)
            )
        if missing:
            statements.append(
                sql.SQL("GRANT {} ON {} TO {}").format(_keywords(missing), _object(spec), role)
            )
        try:
            async with _postgres.session(conn) as s, s.transaction():
                for statement in statements:
                    await s.execute(statement)
        except psycopg.Error as exc:
            raise _error(conn, f"grant {self.describe(spec)}", exc) from None

    async def apply_many(
        self, items: Sequence[tuple[PostgresGrantSpec, Plan]]
    ) -> Sequence[BaseException | str | None]:
        """The plans of one session one after another, the sessions concurrently:
        two sessions changing one object's ACL at once make PostgreSQL fail the
        later with "tuple concurrently updated"."""
        results: list[BaseException | str | None] = [None] * len(items)

        async def run(indexes: list[int]) -> None:
            for i in indexes:
                try:
                    await self.apply(*items[i])
                except Exception as exc:  # an outcome of its item; cancellation propagates
                    results[i] = exc

        groups = self.groups([spec for spec, _ in items], self._target)
        async with asyncio.TaskGroup() as tasks:
            for n, (_, indexes) in enumerate(groups):
                tasks.create_task(run(indexes), name=f"postgres-grant-apply-{n}")
        return results

    async def delete(self, spec: PostgresGrantSpec) -> None:
        # the spec's privileges and the extras in place (an older, wider spec's):
        # all the grant manages, and not REVOKE ALL, which on all tables of a
        # schema would also take one table's extras that a table grant manages
        conn = self._target(spec)
        (held,) = await _held(conn, [spec])
        revoke = set(spec.privileges) | set(held.managed(spec))
        statement = sql.SQL("REVOKE {} ON {} FROM {}").format(
            _keywords([p for p in PRIVILEGES[spec.on] if p in revoke]),
            _object(spec),
            sql.Identifier(spec.role),
        )
        try:
            async with _postgres.session(conn) as s:
                await s.execute(statement)
        except psycopg.Error as exc:
            if exc.sqlstate in _UNDEFINED:
                return  # the role or the object is gone, and the privileges with it
            raise _error(conn, f"revoke {self.describe(spec)}", exc) from None


def _error(conn: PostgresConnection, what: str, exc: psycopg.Error) -> Exception:
    """As `operation_error`, and a race with another session's change of the same
    ACL (an internal error to PostgreSQL) is temporary: retrying succeeds."""
    error = _postgres.operation_error(conn, what, exc)
    if "tuple concurrently updated" in str(exc):
        return TemporaryError(str(error))
    return error


def _missing_and_extra(spec: PostgresGrantSpec, plan: Plan) -> tuple[list[str], list[str]]:
    """What a plan grants and revokes, as keywords of the fixed table (a plan's
    field names are checked against it, never put in a statement as given)."""
    valid = PRIVILEGES[spec.on]
    missing: set[str] = set()
    extra: set[str] = set()
    for change in plan.changes:
        if change.field == "/privileges":
            missing.update(p for p in spec.privileges if p not in (change.before or ()))
        elif change.field.startswith("/privileges/") and change.after is False:
            extra.add(change.field.removeprefix("/privileges/"))
    return [p for p in valid if p in missing], [p for p in valid if p in extra]


def _object_text(spec: PostgresGrantSpec) -> str:
    if spec.on == "database":
        return f"database {spec.database}"
    if spec.on == "schema":
        return f"schema {spec.schema_}"
    if spec.on == "allTablesInSchema":
        return f"all tables in schema {spec.schema_}"
    return f"table {spec.schema_}.{spec.table}"


def _keywords(privileges: Sequence[str]) -> sql.Composed:
    # callers pass names of the fixed table above only, never a spec's text
    return sql.SQL(", ").join(sql.SQL(p) for p in privileges)


def _object(spec: PostgresGrantSpec) -> sql.Composed:
    if spec.on == "database":
        return sql.SQL("DATABASE {}").format(sql.Identifier(str(spec.database)))
    schema = sql.Identifier(str(spec.schema_))
    if spec.on == "schema":
        return sql.SQL("SCHEMA {}").format(schema)
    if spec.on == "allTablesInSchema":
        return sql.SQL("ALL TABLES IN SCHEMA {}").format(schema)
    return sql.SQL("TABLE {}.{}").format(schema, sql.Identifier(str(spec.table)))


_HELD = """
SELECT w.i, o.what, o.owner = r.oid,
  ARRAY(
    SELECT a.privilege_type FROM aclexplode(o.acl) a
    WHERE a.grantee = r.oid
      AND a.grantor = CASE WHEN pg_has_role(o.owner, 'USAGE') THEN o.owner
                           ELSE (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
                      END)
FROM unnest(%(i)s::int[], %(kind)s::text[], %(db)s::text[], %(sch)s::text[], %(tbl)s::text[],
            %(role)s::text[]) AS w(i, kind, db, sch, tbl, role)
JOIN pg_catalog.pg_roles r ON r.rolname = w.role
CROSS JOIN LATERAL (
  SELECT 'object', d.datdba, coalesce(d.datacl, acldefault('d', d.datdba))
  FROM pg_catalog.pg_database d WHERE w.kind = 'database' AND d.datname = w.db
  UNION ALL
  SELECT 'object', n.nspowner, coalesce(n.nspacl, acldefault('n', n.nspowner))
  FROM pg_catalog.pg_namespace n WHERE w.kind = 'schema' AND n.nspname = w.sch
  UNION ALL
  SELECT 'object', c.relowner, coalesce(c.relacl, acldefault('r', c.relowner))
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = w.sch AND (
    (w.kind = 'table' AND c.relname = w.tbl)
    OR (w.kind = 'allTablesInSchema' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')))
  UNION ALL
  SELECT 'schema', NULL, NULL
  FROM pg_catalog.pg_namespace n WHERE w.kind = 'allTablesInSchema' AND n.nspname = w.sch
) AS o(what, owner, acl)
ORDER BY w.i
"""
"""One row per spec and object (each relation of the schema for
allTablesInSchema, plus a row saying the schema exists): whether the grantee
owns it, and the privileges it holds there under the grantor PostgreSQL
records for this session's user (the owner when the user has the owner's
privileges, as a superuser has; else the user: decision 0091)."""


@dataclass
class _Held:
    """What one spec's role holds, under our grantor, on the spec's objects."""

    objects: list[tuple[bool, set[str]]] = field(default_factory=list)
    """Per object: whether the role owns it, and its privileges there."""
    schema: bool = False
    """allTablesInSchema: the schema exists."""

    def managed(self, spec: PostgresGrantSpec) -> list[str]:
        """The privileges the grant manages that are in place: the spec's held on
        every object, and others held on every object the role does not own
        (on all tables of a schema, one table's extra privilege is a table
        grant's business, so the two kinds can be combined: decision 0091)."""
        valid = PRIVILEGES[spec.on]
        if self.objects:
            on_all = set.intersection(*(held for _, held in self.objects))
        else:  # a schema without tables holds everything; a missing object nothing
            on_all = set(valid) if self.schema else set()
        others = [held for owns, held in self.objects if not owns]
        extra = set.intersection(*others) if others else set()
        wanted = set(spec.privileges)
        return [p for p in valid if p in (on_all if p in wanted else extra)]


async def _held(conn: PostgresConnection, specs: list[PostgresGrantSpec]) -> list[_Held]:
    """What each spec's role holds directly on its objects, in one query;
    nothing when the role or the object does not exist."""
    params: dict[str, Any] = {
        "i": list(range(len(specs))),
        "kind": [s.on for s in specs],
        "db": [s.database for s in specs],
        "sch": [s.schema_ for s in specs],
        "tbl": [s.table for s in specs],
        "role": [s.role for s in specs],
    }
    try:
        async with _postgres.session(conn) as s:
            cur = await s.execute(_HELD, params)
            rows = await cur.fetchall()
    except psycopg.Error as exc:
        raise _postgres.operation_error(conn, "read grants", exc) from None
    held = [_Held() for _ in specs]
    for i, what, owns, privileges in rows:
        if what == "schema":
            held[i].schema = True
        else:
            held[i].objects.append((bool(owns), set(privileges or ())))
    return held


__all__ = ["PostgresGrantProvider", "PostgresGrantSpec"]
