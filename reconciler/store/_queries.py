"""The SQLite store's reads: the SQL of the inventory, of the history and of the
last revision, fetch and event. Functions of a connection; the store (sqlite.py)
holds the locks and the caches around them and calls these only with a database
open. The PostgreSQL store's reads (`_pgio`) share the rows' mapping: `records`,
`history_filter`, `transitions`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from reconciler.fsm import State
from reconciler.store.base import Record, Transition

_STATES = {state.value: state for state in State}

RECORD_COLUMNS = (
    "r.id, r.kind, r.name, r.spec_hash, r.spec, r.policy, r.deps, r.created, "
    "s.state, s.last_transition, s.last_error, s.attempts, s.next_attempt, r.instance"
)
"""What an inventory query selects (`r` the resources, `s` the status), in the
order `records` reads."""


def read_all(db: sqlite3.Connection) -> dict[str, Record]:
    """Every record, as the tables hold it."""
    return records(
        db.execute(f"SELECT {RECORD_COLUMNS} FROM resources r JOIN status s ON s.id = r.id")
    )


def records(rows: Iterable[Sequence[Any]]) -> dict[str, Record]:
    """Inventory rows (`RECORD_COLUMNS`) as records by id, whichever database
    they come from."""
    return {
        rid: Record(
            rid,
            kind,
            name,
            spec_hash,
            spec,
            policy,
            () if deps == "[]" else tuple(json.loads(deps)),
            None if created is None else bool(created),
            _STATES[state],
            last_transition,
            last_error,
            attempts,
            next_attempt,
            instance,
        )
        for (
            rid,
            kind,
            name,
            spec_hash,
            spec,
            policy,
            deps,
            created,
            state,
            last_transition,
            last_error,
            attempts,
            next_attempt,
            instance,
        ) in rows
    }


def history(
    db: sqlite3.Connection,
    rid: str | None,
    limit: int,
    kind: str | None,
    since: float | None,
    instance: str | None,
) -> list[Transition]:
    """The newest `limit` rows of the history that match, oldest first."""
    clauses, args = history_filter(rid, kind, since, instance, mark="?")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = db.execute(
        "SELECT seq, ts, id, from_state, to_state, event, reason, instance FROM events "
        f"{where} ORDER BY seq DESC LIMIT ?",
        [*args, limit],
    ).fetchall()
    return transitions(rows)


def history_filter(
    rid: str | None, kind: str | None, since: float | None, instance: str | None, *, mark: str
) -> tuple[list[str], list[object]]:
    """The WHERE clauses of a history query and their arguments, in the driver's
    placeholder `mark` (SQLite's `?`, psycopg's `%s`)."""
    clauses: list[str] = []
    args: list[object] = []
    if rid:
        clauses.append(f"id = {mark}")
        args.append(rid)
    if kind:
        clauses.append(f"id >= {mark} AND id < {mark}")  # ids are Kind/name: a range scan
        args += [f"{kind}/", f"{kind}0"]
    if since is not None:
        clauses.append(f"ts > {mark}")
        args.append(since)
    if instance is not None:
        clauses.append(f"instance = {mark}")
        args.append(instance)
    return clauses, args


def transitions(rows: Sequence[Sequence[Any]]) -> list[Transition]:
    """History rows (seq, ts, id, from, to, event, reason, instance), newest first
    as queried, as transitions oldest first."""
    return [
        Transition(
            r[0],
            r[1],
            r[2],
            r[2].partition("/")[0],
            None if r[3] is None else State(r[3]),
            State(r[4]),
            r[5],
            r[6],
            r[7],
        )
        for r in reversed(rows)
    ]


def newest_revision(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT revision FROM revisions ORDER BY seq DESC LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def last_success(db: sqlite3.Connection, source: str) -> float | None:
    row = db.execute("SELECT last_success FROM sources WHERE source = ?", (source,)).fetchone()
    return None if row is None else float(row[0])


def last_event_times(db: sqlite3.Connection, ids: set[str], event: str) -> dict[str, float]:
    """When each of `ids` last had a transition by `event` in the table."""
    found: dict[str, float] = {}
    for rid in ids:  # the (id, seq) index: one short range scan per id
        row = db.execute(
            "SELECT ts FROM events WHERE id = ? AND event = ? ORDER BY seq DESC LIMIT 1",
            (rid, event),
        ).fetchone()
        if row is not None:
            found[rid] = float(row[0])
    return found
