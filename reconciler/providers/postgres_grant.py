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

Drift is a privilege of the spec the role no longer holds directly (through
its own ACL entry, not through PUBLIC or a role it belongs to). Privileges
granted by others beyond the spec are left alone and not reported (see
docs/decisions/0085). For `allTablesInSchema` a privilege counts as held when
every table, view and sequence-less relation of the schema grants it, so a table
created later is drift, and healing grants it.

A grant that found none of its privileges in place counts as created, and its
removal revokes exactly the spec's privileges; one found already in place is
adopted and released untouched on removal.

Grants are observed with one query per session: one for all grants on databases
(and on objects of the connection's database), one per other database named.
"""

from __future__ import annotations

from collections.abc import Sequence
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
            held = await _held(conn, [specs[i] for i in indexes])
            for i, privileges in zip(indexes, held, strict=True):
                mine = sorted(set(privileges) & set(specs[i].privileges))
                observed[i] = {"privileges": mine} if mine else None
        return observed

    def plan(self, spec: PostgresGrantSpec, observed: Observed | None) -> Plan:
        wanted = list(spec.privileges)
        if observed is None:
            return Plan(Action.CREATE, (Change("/privileges", None, wanted),))
        held = [p for p in wanted if p in observed["privileges"]]
        if held == wanted:
            return NO_CHANGES
        return Plan(Action.UPDATE, (Change("/privileges", held, wanted),))

    async def apply(self, spec: PostgresGrantSpec, plan: Plan) -> None:
        conn = self._target(spec)
        statement = sql.SQL("GRANT {} ON {} TO {}").format(
            _privileges(spec), _object(spec), sql.Identifier(spec.role)
        )
        try:
            async with _postgres.session(conn) as s:
                await s.execute(statement)
        except psycopg.Error as exc:
            raise _postgres.operation_error(conn, f"grant {self.describe(spec)}", exc) from None

    async def delete(self, spec: PostgresGrantSpec) -> None:
        conn = self._target(spec)
        statement = sql.SQL("REVOKE {} ON {} FROM {}").format(
            _privileges(spec), _object(spec), sql.Identifier(spec.role)
        )
        try:
            async with _postgres.session(conn) as s:
                await s.execute(statement)
        except psycopg.Error as exc:
            if exc.sqlstate in _UNDEFINED:
                return  # the role or the object is gone, and the privileges with it
            raise _postgres.operation_error(conn, f"revoke {self.describe(spec)}", exc) from None


def _object_text(spec: PostgresGrantSpec) -> str:
    if spec.on == "database":
        return f"database {spec.database}"
    if spec.on == "schema":
        return f"schema {spec.schema_}"
    if spec.on == "allTablesInSchema":
        return f"all tables in schema {spec.schema_}"
    return f"table {spec.schema_}.{spec.table}"


def _privileges(spec: PostgresGrantSpec) -> sql.Composed:
    # keywords from the fixed table above, never from the spec's text
    return sql.SQL(", ").join(sql.SQL(p) for p in PRIVILEGES[spec.on] if p in spec.privileges)


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
SELECT CASE w.kind
  WHEN 'database' THEN ARRAY(
    SELECT a.privilege_type FROM pg_catalog.pg_database d,
      aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
    WHERE d.datname = w.db AND a.grantee = r.oid)
  WHEN 'schema' THEN ARRAY(
    SELECT a.privilege_type FROM pg_catalog.pg_namespace n,
      aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
    WHERE n.nspname = w.sch AND a.grantee = r.oid)
  WHEN 'table' THEN ARRAY(
    SELECT a.privilege_type FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
      aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
    WHERE n.nspname = w.sch AND c.relname = w.tbl AND a.grantee = r.oid)
  ELSE ARRAY(
    SELECT p FROM unnest(%(table_privileges)s::text[]) p
    WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = w.sch)
      AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = w.sch AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND NOT EXISTS (
            SELECT 1 FROM aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
            WHERE a.grantee = r.oid AND a.privilege_type = p)))
  END
FROM unnest(%(i)s::int[], %(kind)s::text[], %(db)s::text[], %(sch)s::text[], %(tbl)s::text[],
            %(role)s::text[]) AS w(i, kind, db, sch, tbl, role)
LEFT JOIN pg_catalog.pg_roles r ON r.rolname = w.role
ORDER BY w.i
"""


async def _held(conn: PostgresConnection, specs: list[PostgresGrantSpec]) -> list[list[str]]:
    """The privileges each spec's role holds directly on its object, in one
    query; none when the role or the object does not exist."""
    params: dict[str, Any] = {
        "table_privileges": list(TABLE_PRIVILEGES),
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
    return [list(row[0]) if row[0] is not None else [] for row in rows]


__all__ = ["PostgresGrantProvider", "PostgresGrantSpec"]
