"""The PostgreSQL store's SQL: the reads, and the one transaction a flush
writes. Functions of a connection and a shard; the store (postgres.py) holds the
locks, the caches and the connection around them.

A flush sends a handful of statements whatever its size: each table's rows go
as arrays through `unnest` (one statement, one fence check, one round trip),
so a first flush of 12,000 resources is three statements, not 36,000.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from reconciler.store._queries import RECORD_COLUMNS, history_filter, records, transitions
from reconciler.store._rows import Row
from reconciler.store.base import Record, Transition
from reconciler.store.buffered import Batch

Conn = psycopg.Connection[Any]


def read_all(conn: Conn, shard: str) -> dict[str, Record]:
    """Every record of `shard`, as the tables hold it."""
    return records(
        conn.execute(
            f"SELECT {RECORD_COLUMNS} FROM reconciler_resources r JOIN reconciler_status s "
            "ON s.shard = r.shard AND s.id = r.id WHERE r.shard = %s",
            (shard,),
        ).fetchall()
    )


def last_seq(conn: Conn, shard: str) -> int:
    """The newest event's sequence number in `shard` (0: none)."""
    row = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM reconciler_events WHERE shard = %s", (shard,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def history(
    conn: Conn,
    shard: str,
    rid: str | None,
    limit: int,
    kind: str | None,
    since: float | None,
    instance: str | None,
) -> list[Transition]:
    """The newest `limit` rows of the history that match, oldest first."""
    clauses, args = history_filter(rid, kind, since, instance, mark="%s")
    rows = conn.execute(
        "SELECT seq, ts, id, from_state, to_state, event, reason, instance "
        f"FROM reconciler_events WHERE {' AND '.join(['shard = %s', *clauses])} "
        "ORDER BY seq DESC LIMIT %s",
        [shard, *args, limit],
    ).fetchall()
    return transitions(rows)


def newest_revision(conn: Conn, shard: str) -> str | None:
    row = conn.execute(
        "SELECT revision FROM reconciler_revisions WHERE shard = %s ORDER BY seq DESC LIMIT 1",
        (shard,),
    ).fetchone()
    return None if row is None else str(row[0])


def last_success(conn: Conn, shard: str, source: str) -> float | None:
    row = conn.execute(
        "SELECT last_success FROM reconciler_sources WHERE shard = %s AND source = %s",
        (shard, source),
    ).fetchone()
    return None if row is None else float(row[0])


def last_event_times(conn: Conn, shard: str, ids: set[str], event: str) -> dict[str, float]:
    """When each of `ids` last had a transition by `event` in the table."""
    rows = conn.execute(
        "SELECT DISTINCT ON (id) id, ts FROM reconciler_events "
        "WHERE shard = %s AND id = ANY(%s) AND event = %s ORDER BY id, seq DESC",
        (shard, list(ids), event),
    ).fetchall()
    return {rid: float(ts) for rid, ts in rows}


def _columns(values: Sequence[tuple[object, ...]], width: int) -> list[list[object]]:
    """Rows as one list per column (what `unnest` takes)."""
    return [list(column) for column in zip(*values, strict=True)] if values else [[]] * width


def write(
    conn: Conn,
    shard: str,
    epoch: int | None,
    batch: Batch,
    rows: dict[str, Row],
    first_seq: int,
    history_limit: int,
) -> int:
    """Write `batch` in one transaction as the writer of `epoch` (the fence
    refuses it if the lease is newer); events are numbered from `first_seq`.
    Returns the last event's number."""
    # As in SQLite's write: the rows' values are read outside the `_buffer` lock;
    # a row changed meanwhile is dirty again in the new buffers.
    last = first_seq - 1
    with conn.transaction():
        _as_writer(conn, shard, epoch)
        if batch.resources:
            resources = [row.resource_values() for row in map(rows.get, batch.resources) if row]
            if resources:
                conn.execute(
                    "INSERT INTO reconciler_resources "
                    "(shard, id, kind, name, spec_hash, spec, policy, deps, created, instance, "
                    "epoch) SELECT %s, u.*, %s FROM unnest(%s::text[], %s::text[], %s::text[], "
                    "%s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[], %s::text[]) "
                    "AS u ON CONFLICT (shard, id) DO UPDATE SET kind = excluded.kind, "
                    "name = excluded.name, spec_hash = excluded.spec_hash, spec = excluded.spec, "
                    "policy = excluded.policy, deps = excluded.deps, created = excluded.created, "
                    "instance = excluded.instance, epoch = excluded.epoch",
                    [shard, epoch, *_columns(resources, 9)],
                )
        if batch.status:
            status = [row.status_values() for row in map(rows.get, batch.status) if row]
            if status:
                conn.execute(
                    "INSERT INTO reconciler_status (shard, id, state, last_transition, "
                    "last_error, attempts, next_attempt, epoch) SELECT %s, u.*, %s FROM "
                    "unnest(%s::text[], %s::text[], %s::float8[], %s::text[], %s::int[], "
                    "%s::float8[]) AS u ON CONFLICT (shard, id) DO UPDATE SET "
                    "state = excluded.state, last_transition = excluded.last_transition, "
                    "last_error = excluded.last_error, attempts = excluded.attempts, "
                    "next_attempt = excluded.next_attempt, epoch = excluded.epoch",
                    [shard, epoch, *_columns(status, 6)],
                )
        if batch.forgotten:
            gone = list(batch.forgotten)
            for table in ("reconciler_resources", "reconciler_status"):
                conn.execute(
                    f"DELETE FROM {table} WHERE shard = %s AND id = ANY(%s::text[])",
                    (shard, gone),
                )
        if batch.events:
            last = first_seq + len(batch.events) - 1
            events = [
                (seq, ts, rid, None if old is None else old.value, new.value, name, why, inst)
                for seq, (ts, rid, old, new, name, why, inst) in enumerate(batch.events, first_seq)
            ]
            conn.execute(
                "INSERT INTO reconciler_events (shard, seq, ts, id, from_state, to_state, "
                "event, reason, instance, epoch) SELECT %s, u.*, %s FROM unnest(%s::bigint[], "
                "%s::float8[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
                "%s::text[]) AS u",
                [shard, epoch, *_columns(events, 8)],
            )
            if last > history_limit:
                conn.execute(
                    "DELETE FROM reconciler_events WHERE shard = %s AND seq <= %s",
                    (shard, last - history_limit),
                )
        if batch.revisions:
            conn.execute(
                "INSERT INTO reconciler_revisions (shard, revision, applied_at, epoch) "
                "SELECT %s, u.*, %s FROM unnest(%s::text[], %s::float8[]) AS u",
                [shard, epoch, *_columns(batch.revisions, 2)],
            )
            conn.execute(
                "DELETE FROM reconciler_revisions WHERE shard = %s AND seq < ("
                "SELECT min(seq) FROM (SELECT seq FROM reconciler_revisions WHERE shard = %s "
                "ORDER BY seq DESC LIMIT 1000) AS kept)",
                (shard, shard),
            )
        if batch.fetched:
            conn.execute(
                "INSERT INTO reconciler_sources (shard, source, last_success, epoch) "
                "SELECT %s, u.*, %s FROM unnest(%s::text[], %s::float8[]) AS u "
                "ON CONFLICT (shard, source) DO UPDATE SET "
                "last_success = excluded.last_success, epoch = excluded.epoch",
                [shard, epoch, *_columns(list(batch.fetched.items()), 2)],
            )
    return last


def _as_writer(conn: Conn, shard: str, epoch: int | None) -> None:
    """Tell the fence, for this transaction, whose write it is."""
    conn.execute(
        "SELECT set_config('reconciler.shard', %s, true), set_config('reconciler.epoch', %s, true)",
        (shard, "" if epoch is None else str(epoch)),
    )


def shared_key(conn: Conn, name: str) -> bytes:
    """The database's key called `name` (32 random bytes), made by the first
    daemon that asks; every daemon of the database gets the same."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO reconciler_keys (name, key) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
            (name, secrets.token_bytes(32)),
        )
        found = conn.execute("SELECT key FROM reconciler_keys WHERE name = %s", (name,)).fetchone()
    assert found is not None
    return bytes(found[0])


# run records (RunRecords: a guard-less Command's last run)


def get_runs(conn: Conn, shard: str, keys: Sequence[str]) -> list[dict[str, Any] | None]:
    """The record of each of `keys` in `shard`, in order (None: none); one query."""
    rows = conn.execute(
        "SELECT key, record FROM reconciler_runs WHERE shard = %s AND key = ANY(%s::text[])",
        (shard, list(keys)),
    ).fetchall()
    found = {str(key): record for key, record in rows if isinstance(record, dict)}
    return [found.get(key) for key in keys]


def put_run(conn: Conn, shard: str, epoch: int | None, key: str, record: Mapping[str, Any]) -> None:
    """Write one record in a transaction of its own, as the writer of `epoch`."""
    with conn.transaction():
        _as_writer(conn, shard, epoch)
        conn.execute(
            "INSERT INTO reconciler_runs (shard, key, record, epoch) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (shard, key) DO UPDATE SET record = excluded.record, "
            "epoch = excluded.epoch",
            (shard, key, Jsonb(dict(record)), epoch),
        )


def drop_run(conn: Conn, shard: str, epoch: int | None, key: str) -> None:
    with conn.transaction():
        _as_writer(conn, shard, epoch)
        conn.execute("DELETE FROM reconciler_runs WHERE shard = %s AND key = %s", (shard, key))
