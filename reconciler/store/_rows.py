"""The SQLite store's schema (its migrations) and the mutable row its buffered
writes update in place; `sqlite.py` holds the store itself."""

from __future__ import annotations

import dataclasses
import json

from reconciler.fsm import State
from reconciler.store.base import Record

MIGRATIONS: tuple[str, ...] = (
    # 1: inventory, status, history, revisions
    """
    CREATE TABLE resources (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        spec_hash TEXT,
        spec TEXT,
        policy TEXT,
        deps TEXT NOT NULL DEFAULT '[]',
        created INTEGER
    );
    CREATE TABLE status (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        last_transition REAL NOT NULL,
        last_error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        id TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        event TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX events_by_id ON events (id, seq);
    CREATE TABLE revisions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        revision TEXT NOT NULL,
        applied_at REAL NOT NULL
    );
    """,
    # 2: facts about sources that must outlive the process (the last successful fetch)
    """
    CREATE TABLE sources (
        source TEXT PRIMARY KEY,
        last_success REAL NOT NULL
    );
    """,
    # 3: the bundle instance that made each resource, on its inventory row and on
    # each event (a pruned resource's row is gone, its events still say where it
    # came from); '' for a resource written flat. ADD COLUMN with a constant
    # default rewrites no rows, so upgrading a large database is instant.
    """
    ALTER TABLE resources ADD COLUMN instance TEXT NOT NULL DEFAULT '';
    ALTER TABLE events ADD COLUMN instance TEXT NOT NULL DEFAULT '';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def empty(rid: str, now: float) -> Record:
    kind, _, name = rid.partition("/")
    return Record(
        rid, kind, name, None, None, None, (), None, State.PENDING, now, None, 0, None, ""
    )


_FIELDS = tuple(field.name for field in dataclasses.fields(Record))


@dataclasses.dataclass(slots=True)
class Row:
    """A mutable copy of one Record (same fields, same order), updated in place
    by buffered writes."""

    id: str
    kind: str
    name: str
    spec_hash: str | None
    spec: str | None
    policy: str | None
    deps: tuple[str, ...]
    created: bool | None
    state: State
    last_transition: float
    last_error: str | None
    attempts: int
    next_attempt: float | None
    instance: str

    @classmethod
    def of(cls, record: Record) -> Row:
        return cls(*(getattr(record, name) for name in _FIELDS))

    def record(self) -> Record:
        return Record(
            self.id,
            self.kind,
            self.name,
            self.spec_hash,
            self.spec,
            self.policy,
            self.deps,
            self.created,
            self.state,
            self.last_transition,
            self.last_error,
            self.attempts,
            self.next_attempt,
            self.instance,
        )

    def resource_values(self) -> tuple[object, ...]:
        """The resources table's columns (`created` a bool: SQLite stores it as
        1 or 0, PostgreSQL as a boolean)."""
        return (
            self.id,
            self.kind,
            self.name,
            self.spec_hash,
            self.spec,
            self.policy,
            json.dumps(self.deps),
            self.created,
            self.instance,
        )

    def status_values(self) -> tuple[object, ...]:
        return (
            self.id,
            self.state.value,
            self.last_transition,
            self.last_error,
            self.attempts,
            self.next_attempt,
        )


if tuple(field.name for field in dataclasses.fields(Row)) != _FIELDS:
    raise AssertionError("Row must have Record's fields in Record's order")
