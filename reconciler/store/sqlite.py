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
from collections.abc import Collection, Iterator
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


class StoreLocked(StoreError):
    pass


def _empty(rid: str, now: float) -> Record:
    kind, _, name = rid.partition("/")
    return Record(
        rid, kind, name, None, None, None, (), None, State.PENDING, now, None, 0, None, ""
    )


_FIELDS = tuple(field.name for field in dataclasses.fields(Record))


@dataclasses.dataclass(slots=True)
class _Row:
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
    def of(cls, record: Record) -> _Row:
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
        created = None if self.created is None else int(self.created)
        return (
            self.id,
            self.kind,
            self.name,
            self.spec_hash,
            self.spec,
            self.policy,
            json.dumps(self.deps),
            created,
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


if tuple(field.name for field in dataclasses.fields(_Row)) != _FIELDS:
    raise AssertionError("_Row must have Record's fields in Record's order")


class SqliteStore:
    def __init__(
        self, state_dir: Path, *, readonly: bool = False, history_limit: int = 50_000
    ) -> None:
        self.path = state_dir / DB_NAME
        self.readonly = readonly
        self.history_limit = history_limit
        self._lock_fd: int | None = None
        self._loaded: dict[str, Record] | None = None
        """Records as read from the database, or rebuilt by `inventory` from the
        rows written since (those ids wait in _changed until then)."""
        self._rows: dict[str, _Row] = {}
        """Mutable rows of every resource written since the database was read."""
        self._changed: set[str] = set()
        self._dirty_status: set[str] = set()
        self._dirty_resources: set[str] = set()
        self._forgotten: set[str] = set()
        self._events: list[tuple[float, str, State | None, State, str, str | None, str]] = []
        self._revisions: list[tuple[str, float]] = []
        self._fetched: dict[str, float] = {}
        self._db: sqlite3.Connection | None
        if readonly:
            self._db = self._open_readonly()
            return
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create state directory {state_dir}: {exc.strerror}") from exc
        self._lock(state_dir)
        self._db = None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except (sqlite3.DatabaseError, StoreError) as exc:
            if self._db is not None:
                self._db.close()
            self._unlock()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"state database {self.path}: {exc}") from exc

    def _open_readonly(self) -> sqlite3.Connection | None:
        if not self.path.exists():
            return None
        try:
            # With no writer active (no WAL file) open immutable: SQLite then creates no
            # -wal/-shm files, so a read-only look leaves the state directory untouched.
            wal = self.path.with_name(self.path.name + "-wal")
            flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
            db = sqlite3.connect(f"file:{self.path}?{flags}", uri=True, isolation_level=None)
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"state database {self.path}: {exc}") from exc
        if version != SCHEMA_VERSION:
            db.close()
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
        """Every record as of now: a copy. Only rows changed since the last call
        are turned into records again, so the daemon may call it at every pass
        and every scrape."""
        if self._loaded is None:
            self._loaded = self._load()
        for rid in self._changed:
            row = self._rows.get(rid)
            if row is not None:
                self._loaded[rid] = row.record()
        self._changed.clear()
        return dict(self._loaded)

    def _load(self) -> dict[str, Record]:
        if self._db is None:
            return {}
        rows = self._db.execute(
            "SELECT r.id, r.kind, r.name, r.spec_hash, r.spec, r.policy, r.deps, r.created, "
            "s.state, s.last_transition, s.last_error, s.attempts, s.next_attempt, r.instance "
            "FROM resources r JOIN status s ON s.id = r.id"
        )
        states = {state.value: state for state in State}
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
                states[state],
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

    def last_revision(self) -> str | None:
        if self._revisions:
            return self._revisions[-1][0]
        if self._db is None:
            return None
        row = self._db.execute(
            "SELECT revision FROM revisions ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else str(row[0])

    def last_fetched(self, source: str) -> float | None:
        """When `source` (its redacted URL) was last fetched successfully, in any
        process that used this state directory; None if never."""
        if source in self._fetched:
            return self._fetched[source]
        if self._db is None:
            return None
        row = self._db.execute(
            "SELECT last_success FROM sources WHERE source = ?", (source,)
        ).fetchone()
        return None if row is None else float(row[0])

    def last_events(self, ids: Collection[str], event: str) -> dict[str, float]:
        """When each of `ids` last had a transition by `event`, from the history
        (an id whose history holds none, or was trimmed away, is missing)."""
        found: dict[str, float] = {}
        wanted = set(ids)
        if self._db is not None and wanted:
            for rid in wanted:  # the (id, seq) index: one short range scan per id
                row = self._db.execute(
                    "SELECT ts FROM events WHERE id = ? AND event = ? ORDER BY seq DESC LIMIT 1",
                    (rid, event),
                ).fetchone()
                if row is not None:
                    found[rid] = float(row[0])
        for ts, rid, _, _, name, _, _ in self._events:  # not flushed yet: newer
            if rid in wanted and name == event:
                found[rid] = ts
        return found

    def history(
        self,
        rid: str | None = None,
        limit: int = 100,
        *,
        kind: str | None = None,
        since: float | None = None,
        instance: str | None = None,
    ) -> list[Transition]:
        """The newest `limit` transitions, oldest first, optionally of one resource,
        of one kind, of one bundle instance, or after a time (unix seconds)."""
        self.flush()
        if self._db is None:
            return []
        clauses: list[str] = []
        args: list[object] = []
        if rid:
            clauses.append("id = ?")
            args.append(rid)
        if kind:
            clauses.append("id >= ? AND id < ?")  # ids are Kind/name: a range scan
            args += [f"{kind}/", f"{kind}0"]
        if since is not None:
            clauses.append("ts > ?")
            args.append(since)
        if instance is not None:
            clauses.append("instance = ?")
            args.append(instance)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            "SELECT seq, ts, id, from_state, to_state, event, reason, instance FROM events "
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
                r[7],
            )
            for r in reversed(rows)
        ]

    # writing (buffered)

    def _row(self, rid: str) -> _Row:
        """The row of `rid`, for the caller to change."""
        self._changed.add(rid)
        row = self._rows.get(rid)
        if row is not None:
            return row
        if self._loaded is None:
            self._loaded = self._load()
        loaded = self._loaded.get(rid)
        if loaded is not None:
            row = self._rows[rid] = _Row.of(loaded)
        else:
            row = self._rows[rid] = _Row.of(_empty(rid, time.time()))
            self._forgotten.discard(rid)
            self._dirty_resources.add(rid)
            self._dirty_status.add(rid)
        return row

    def transition(
        self,
        rid: str,
        from_state: State | None,
        to_state: State,
        event: str,
        reason: str | None = None,
        error: str | None = None,
        *,
        instance: str | None = None,
    ) -> float:
        now = time.time()
        row = self._row(rid)
        row.state, row.last_transition, row.last_error = to_state, now, error
        if instance is not None and instance != row.instance:
            row.instance = instance
            self._dirty_resources.add(rid)
        self._dirty_status.add(rid)
        self._events.append((now, rid, from_state, to_state, event, reason, row.instance))
        return now

    def intend(
        self,
        rid: str,
        spec: str,
        policy: str,
        deps: tuple[str, ...],
        created: bool | None,
        *,
        instance: str = "",
    ) -> None:
        row = self._row(rid)
        row.spec, row.policy, row.deps, row.created = spec, policy, deps, created
        row.instance = instance
        self._dirty_resources.add(rid)

    def converged(
        self,
        rid: str,
        spec_hash: str,
        spec: str,
        policy: str,
        deps: tuple[str, ...],
        created: bool | None,
        *,
        instance: str = "",
    ) -> None:
        row = self._row(rid)
        row.spec_hash, row.spec, row.policy, row.deps, row.created, row.instance = (
            spec_hash,
            spec,
            policy,
            deps,
            created,
            instance,
        )
        row.attempts, row.next_attempt = 0, None
        self._dirty_resources.add(rid)
        self._dirty_status.add(rid)

    def schedule_retry(self, rid: str, attempts: int, next_attempt: float | None) -> None:
        row = self._row(rid)
        row.attempts, row.next_attempt = attempts, next_attempt
        self._dirty_status.add(rid)

    def forget(self, rid: str) -> None:
        self._rows.pop(rid, None)
        if self._loaded is not None:
            self._loaded.pop(rid, None)
        self._dirty_status.discard(rid)
        self._dirty_resources.discard(rid)
        self._forgotten.add(rid)

    def set_revision(self, revision: str) -> None:
        self._revisions.append((revision, time.time()))

    def set_fetched(self, source: str, at: float) -> None:
        self._fetched[source] = at

    def flush(self) -> None:
        if self._db is None or self.readonly:
            return
        if not (
            self._dirty_status
            or self._dirty_resources
            or self._forgotten
            or self._events
            or self._revisions
            or self._fetched
        ):
            return
        rows = self._rows
        db = self._db
        with self._transaction():
            db.execute("BEGIN")
            if self._dirty_resources:
                db.executemany(
                    "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [rows[rid].resource_values() for rid in self._dirty_resources],
                )
            if self._dirty_status:
                db.executemany(
                    "INSERT OR REPLACE INTO status VALUES (?, ?, ?, ?, ?, ?)",
                    [rows[rid].status_values() for rid in self._dirty_status],
                )
            if self._forgotten:
                gone = [(rid,) for rid in self._forgotten]
                db.executemany("DELETE FROM resources WHERE id = ?", gone)
                db.executemany("DELETE FROM status WHERE id = ?", gone)
            if self._events:
                db.executemany(
                    "INSERT INTO events (ts, id, from_state, to_state, event, reason, instance) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            if self._fetched:
                db.executemany(
                    "INSERT OR REPLACE INTO sources VALUES (?, ?)", self._fetched.items()
                )
        self._dirty_status.clear()
        self._dirty_resources.clear()
        self._forgotten.clear()
        self._events.clear()
        self._revisions.clear()
        self._fetched.clear()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._unlock()
