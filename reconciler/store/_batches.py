"""The SQLite store's writes: the buffers one flush takes (`Batch`) and the one
transaction that writes them. The store (sqlite.py) fills the buffers on the
caller's thread and takes them under its locks (decision 0119); this is only the
SQL, and the transaction helper the migrations use too."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from reconciler.store._rows import Row
from reconciler.store.buffered import Batch, Event

__all__ = ["Batch", "Event", "transaction", "write"]


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Commit what the block began, or roll it back."""
    try:
        yield
        if db.in_transaction:
            db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def write(db: sqlite3.Connection, batch: Batch, rows: dict[str, Row], history_limit: int) -> None:
    """Write `batch` in one transaction; `rows` are the store's rows, the history
    is trimmed to the newest `history_limit` events."""
    # The rows' values are read here, outside the store's `_buffer` lock, while
    # the caller's thread may change them: a row changed during the read is marked
    # dirty again (in the new buffers, after the change), so the next flush writes
    # its final values; a row forgotten meanwhile is skipped here and deleted by
    # the next flush.
    with transaction(db):
        db.execute("BEGIN")
        if batch.resources:
            db.executemany(
                "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row.resource_values() for row in map(rows.get, batch.resources) if row],
            )
        if batch.status:
            db.executemany(
                "INSERT OR REPLACE INTO status VALUES (?, ?, ?, ?, ?, ?)",
                [row.status_values() for row in map(rows.get, batch.status) if row],
            )
        if batch.forgotten:
            gone = [(rid,) for rid in batch.forgotten]
            db.executemany("DELETE FROM resources WHERE id = ?", gone)
            db.executemany("DELETE FROM status WHERE id = ?", gone)
        if batch.events:
            db.executemany(
                "INSERT INTO events (ts, id, from_state, to_state, event, reason, instance) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                batch.events,
            )
            last = db.execute("SELECT max(seq) FROM events").fetchone()[0]
            db.execute("DELETE FROM events WHERE seq <= ?", (last - history_limit,))
        if batch.revisions:
            db.executemany(
                "INSERT INTO revisions (revision, applied_at) VALUES (?, ?)", batch.revisions
            )
            db.execute("DELETE FROM revisions WHERE seq <= (SELECT max(seq) FROM revisions) - 1000")
        if batch.fetched:
            db.executemany("INSERT OR REPLACE INTO sources VALUES (?, ?)", batch.fetched.items())
