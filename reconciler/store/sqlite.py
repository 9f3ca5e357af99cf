"""SQLite implementation of the state store, in WAL mode under the state directory.

Writes are buffered in memory and committed by `flush` in one transaction: the
engine flushes before every side effect (so intent is durable before a create)
and at the end of a pass. Losing an unflushed tail in a crash is harmless: it
holds only transitions of resources that are re-detected on restart anyway.
A lock file keeps a second process off the same state directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from reconciler.fsm import State
from reconciler.store.base import Record, StoreError, Transition

DB_NAME = "state.db"
LOCK_NAME = "lock"

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
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreLocked(StoreError):
    pass


def _empty(rid: str, now: float) -> Record:
    kind, _, name = rid.partition("/")
    return Record(rid, kind, name, None, None, None, (), None, State.PENDING, now, None, 0, None)


class SqliteStore:
    def __init__(
        self, state_dir: Path, *, readonly: bool = False, history_limit: int = 50_000
    ) -> None:
        self.path = state_dir / DB_NAME
        self.readonly = readonly
        self.history_limit = history_limit
        self._lock_fd: int | None = None
        self._records: dict[str, Record] | None = None
        self._status: dict[str, Record] = {}
        self._resources: dict[str, Record] = {}
        self._forgotten: set[str] = set()
        self._events: list[tuple[float, str, str | None, str, str, str | None]] = []
        self._revisions: list[tuple[str, float]] = []
        self._persisted: set[str] = set()
        self._db: sqlite3.Connection | None
        if readonly:
            self._db = self._open_readonly()
            return
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create state directory {state_dir}: {exc.strerror}") from exc
        self._lock(state_dir)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._unlock()
            raise StoreError(f"state database {self.path}: {exc}") from exc

    def _open_readonly(self) -> sqlite3.Connection | None:
        if not self.path.exists():
            return None
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"state database {self.path}: {exc}") from exc
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema {version}, this version uses "
                f"{SCHEMA_VERSION}: run apply once to migrate"
            )
        return db

    def _lock(self, state_dir: Path) -> None:
        lock_path = state_dir / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"state directory {state_dir} is in use by another reconciler (pid {holder}); "
                "stop it or use another --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _migrate(self) -> None:
        assert self._db is not None
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema {version}, newer than this "
                f"version's {SCHEMA_VERSION}: upgrade reconciler"
            )
        for number in range(version, SCHEMA_VERSION):
            with self._transaction():
                self._db.executescript(
                    "BEGIN;" + MIGRATIONS[number] + f";PRAGMA user_version={number + 1};"
                )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        assert self._db is not None
        try:
            yield
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # reading

    def inventory(self) -> dict[str, Record]:
        if self._records is None:
            self._records = self._load()
            self._persisted = set(self._records)
        return dict(self._records)

    def _load(self) -> dict[str, Record]:
        if self._db is None:
            return {}
        rows = self._db.execute(
            "SELECT r.id, r.kind, r.name, r.spec_hash, r.spec, r.policy, r.deps, r.created, "
            "s.state, s.last_transition, s.last_error, s.attempts, s.next_attempt "
            "FROM resources r JOIN status s ON s.id = r.id"
        )
        return {
            row[0]: Record(
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                tuple(json.loads(row[6])),
                None if row[7] is None else bool(row[7]),
                State(row[8]),
                row[9],
                row[10],
                row[11],
                row[12],
            )
            for row in rows
        }

    def last_revision(self) -> str | None:
        if self._revisions:
            return self._revisions[-1][0]
        if self._db is None:
            return None
        row = self._db.execute(
            "SELECT revision FROM revisions ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else str(row[0])

    def history(self, rid: str | None = None, limit: int = 100) -> list[Transition]:
        self.flush()
        if self._db is None:
            return []
        where, args = ("WHERE e.id = ?", [rid]) if rid else ("", [])
        rows = self._db.execute(
            "SELECT seq, ts, id, from_state, to_state, event, reason FROM events e "
            f"{where} ORDER BY seq DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
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
            )
            for r in reversed(rows)
        ]

    # writing (buffered)

    def _get(self, rid: str, now: float) -> Record:
        records = self._records if self._records is not None else self.inventory()
        assert self._records is not None
        return records.get(rid) or _empty(rid, now)

    def _put(self, record: Record, *, resource: bool = False) -> None:
        assert self._records is not None
        self._records[record.id] = record
        self._forgotten.discard(record.id)
        self._status[record.id] = record
        if resource or record.id not in self._persisted:
            self._resources[record.id] = record
            self._persisted.add(record.id)

    def transition(
        self,
        rid: str,
        from_state: State | None,
        to_state: State,
        event: str,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        now = time.time()
        old = self._get(rid, now)
        self._put(dataclasses.replace(old, state=to_state, last_transition=now, last_error=error))
        self._events.append((now, rid, from_state, to_state, event, reason))

    def intend(
        self, rid: str, spec: str, policy: str, deps: tuple[str, ...], created: bool | None
    ) -> None:
        old = self._get(rid, time.time())
        self._put(
            dataclasses.replace(old, spec=spec, policy=policy, deps=deps, created=created),
            resource=True,
        )
        self.flush()

    def converged(
        self,
        rid: str,
        spec_hash: str,
        spec: str,
        policy: str,
        deps: tuple[str, ...],
        created: bool | None,
    ) -> None:
        old = self._get(rid, time.time())
        self._put(
            dataclasses.replace(
                old,
                spec_hash=spec_hash,
                spec=spec,
                policy=policy,
                deps=deps,
                created=created,
                attempts=0,
                next_attempt=None,
            ),
            resource=True,
        )

    def schedule_retry(self, rid: str, attempts: int, next_attempt: float | None) -> None:
        old = self._get(rid, time.time())
        self._put(dataclasses.replace(old, attempts=attempts, next_attempt=next_attempt))

    def forget(self, rid: str) -> None:
        if self._records is not None:
            self._records.pop(rid, None)
        self._status.pop(rid, None)
        self._resources.pop(rid, None)
        self._persisted.discard(rid)
        self._forgotten.add(rid)

    def set_revision(self, revision: str) -> None:
        self._revisions.append((revision, time.time()))

    def flush(self) -> None:
        if self._db is None or self.readonly:
            return
        if not (
            self._status or self._resources or self._forgotten or self._events or self._revisions
        ):
            return
        db = self._db
        with self._transaction():
            db.execute("BEGIN")
            if self._resources:
                db.executemany(
                    "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.id,
                            r.kind,
                            r.name,
                            r.spec_hash,
                            r.spec,
                            r.policy,
                            json.dumps(r.deps),
                            None if r.created is None else int(r.created),
                        )
                        for r in self._resources.values()
                    ],
                )
            if self._status:
                db.executemany(
                    "INSERT OR REPLACE INTO status VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.id,
                            r.state.value,
                            r.last_transition,
                            r.last_error,
                            r.attempts,
                            r.next_attempt,
                        )
                        for r in self._status.values()
                    ],
                )
            if self._forgotten:
                gone = [(rid,) for rid in self._forgotten]
                db.executemany("DELETE FROM resources WHERE id = ?", gone)
                db.executemany("DELETE FROM status WHERE id = ?", gone)
            if self._events:
                db.executemany(
                    "INSERT INTO events (ts, id, from_state, to_state, event, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    self._events,
                )
                last = db.execute("SELECT max(seq) FROM events").fetchone()[0]
                db.execute("DELETE FROM events WHERE seq <= ?", (last - self.history_limit,))
            if self._revisions:
                db.executemany(
                    "INSERT INTO revisions (revision, applied_at) VALUES (?, ?)", self._revisions
                )
                db.execute(
                    "DELETE FROM revisions WHERE seq <= (SELECT max(seq) FROM revisions) - 1000"
                )
        self._status.clear()
        self._resources.clear()
        self._forgotten.clear()
        self._events.clear()
        self._revisions.clear()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._unlock()
