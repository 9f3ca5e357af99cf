"""SQLite implementation of the state store, in WAL mode under the state directory.

Writes are buffered in memory and committed by `flush` in one transaction: the
engine flushes before every side effect (so intent is durable before a create)
and at the end of a pass. Losing an unflushed tail in a crash is harmless: it
holds only transitions of resources that are re-detected on restart anyway.
A lock file keeps a second process off the same state directory.

Threads (decision 0119): the buffered writes and `inventory` are made on the
caller's thread (the daemon's event loop) and only touch memory; `flush` and the
reads that query the database may run on another thread at the same time, which
is how the daemon keeps SQLite off its loop (`store.offloop`). Two locks make
that safe: `_buffer` guards the write buffers for the instant a flush swaps them
out, and `_writing` keeps one thread at a time on the connection, so batches are
written in the order they were taken. The revision and fetch times last written
are kept in memory, so the engine's and the daemon's look at them never waits
for a flush.

This module holds the buffers, the locks and the connection; the SQL is beside
it: `_queries` (the reads), `_batches` (the batch a flush writes), `_rows`
(migrations and rows).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path

from reconciler.fsm import State
from reconciler.store import _queries
from reconciler.store._batches import Batch, Event, transaction, write
from reconciler.store._rows import MIGRATIONS, SCHEMA_VERSION, Row, empty
from reconciler.store.base import Record, StoreError, Transition

__all__ = ["DB_NAME", "SCHEMA_VERSION", "SqliteStore", "StoreLocked"]

DB_NAME = "state.db"
LOCK_NAME = "lock"


class StoreLocked(StoreError):
    pass


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
        self._rows: dict[str, Row] = {}
        """Mutable rows of every resource written since the database was read."""
        self._changed: set[str] = set()
        self._states: Counter[State] = Counter()
        """How many records are in each state, kept as the writes change them, so
        the daemon's status never counts the inventory (12,000 records: ~10 ms)."""
        self._dirty_status: set[str] = set()
        self._dirty_resources: set[str] = set()
        self._forgotten: set[str] = set()
        self._events: list[Event] = []
        self._revisions: list[tuple[str, float]] = []
        self._fetched: dict[str, float] = {}
        self._revision: list[str | None] = []
        """[the last revision written] once known: read once, then kept."""
        self._fetched_at: dict[str, float | None] = {}
        """The last fetch of each source asked about or written: read once, then kept."""
        self._buffer = threading.Lock()
        self._writing = threading.RLock()
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
            with transaction(self._db):
                self._db.executescript(
                    "BEGIN;" + MIGRATIONS[number] + f";PRAGMA user_version={number + 1};"
                )

    # reading

    def inventory(self) -> dict[str, Record]:
        """Every record as of now: a copy. Only rows changed since the last call
        are turned into records again, so the daemon may call it at every pass
        and every scrape."""
        loaded = self._records()
        for rid in self._changed:
            row = self._rows.get(rid)
            if row is not None:
                loaded[rid] = row.record()
        self._changed.clear()
        return dict(loaded)

    def state_counts(self) -> dict[State, int]:
        """How many records are in each state (the states with none left out),
        without building the inventory."""
        self._records()
        return {state: n for state, n in self._states.items() if n}

    def ids(self) -> list[str]:
        """Every record's id, without building the records."""
        loaded = self._records()
        return [*loaded, *(rid for rid in self._rows if rid not in loaded)]

    def record(self, rid: str) -> Record | None:
        """One record as of now (None: no such resource)."""
        row = self._rows.get(rid)
        return row.record() if row is not None else self._records().get(rid)

    def states(self) -> dict[str, State]:
        """Every record's state, without building the records."""
        states = {rid: record.state for rid, record in self._records().items()}
        for rid, row in self._rows.items():  # newer than what was loaded
            states[rid] = row.state
        return states

    def _records(self) -> dict[str, Record]:
        """The records as read (or last rebuilt): read from the database once."""
        if self._loaded is None:
            with self._writing:
                loaded = {} if self._db is None else _queries.read_all(self._db)
            self._states = Counter(record.state for record in loaded.values())
            self._loaded = loaded
        return self._loaded

    def last_revision(self) -> str | None:
        if not self._revision:
            with self._writing:
                newest = None if self._db is None else _queries.newest_revision(self._db)
            if not self._revision:  # set_revision on another thread meanwhile wins
                self._revision.append(newest)
        return self._revision[-1]

    def last_fetched(self, source: str) -> float | None:
        """When `source` (its redacted URL) was last fetched successfully, in any
        process that used this state directory; None if never."""
        if source not in self._fetched_at:
            with self._writing:
                at = None if self._db is None else _queries.last_success(self._db, source)
            self._fetched_at.setdefault(source, at)
        return self._fetched_at[source]

    def last_events(self, ids: Collection[str], event: str) -> dict[str, float]:
        """When each of `ids` last had a transition by `event`, from the history
        (an id whose history holds none, or was trimmed away, is missing)."""
        found: dict[str, float] = {}
        wanted = set(ids)
        with self._writing:  # a flush in flight lands first: its events are in the table
            if self._db is not None and wanted:
                found = _queries.last_event_times(self._db, wanted, event)
            with self._buffer:
                pending = list(self._events)
        for ts, rid, _, _, name, _, _ in pending:  # not flushed yet: newer
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
        with self._writing:
            self.flush()
            if self._db is None:
                return []
            return _queries.history(self._db, rid, limit, kind, since, instance)

    # writing (buffered)

    def _ready(self) -> None:
        """Read the records before a first write (which holds `_buffer`, and must
        not then wait for `_writing`: flushes take the two the other way round)."""
        self._records()

    def _row(self, rid: str) -> Row:
        """The row of `rid`, for the caller to change (holding `_buffer`, after
        `_ready`)."""
        self._changed.add(rid)
        row = self._rows.get(rid)
        if row is not None:
            return row
        assert self._loaded is not None
        loaded = self._loaded.get(rid)
        if loaded is not None:
            row = self._rows[rid] = Row.of(loaded)
        else:
            row = self._rows[rid] = Row.of(empty(rid, time.time()))
            self._states[row.state] += 1
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
        self._ready()
        with self._buffer:
            row = self._row(rid)
            if row.state is not to_state:
                self._states[row.state] -= 1
                self._states[to_state] += 1
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
        self._ready()
        with self._buffer:
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
        self._ready()
        with self._buffer:
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
        self._ready()
        with self._buffer:
            row = self._row(rid)
            row.attempts, row.next_attempt = attempts, next_attempt
            self._dirty_status.add(rid)

    def forget(self, rid: str) -> None:
        with self._buffer:
            row = self._rows.pop(rid, None)
            loaded = None if self._loaded is None else self._loaded.pop(rid, None)
            gone = row or loaded  # a row is newer than the record loaded
            if gone is not None:
                self._states[gone.state] -= 1
            self._dirty_status.discard(rid)
            self._dirty_resources.discard(rid)
            self._forgotten.add(rid)

    def set_revision(self, revision: str) -> None:
        with self._buffer:
            self._revisions.append((revision, time.time()))
            self._revision.append(revision)
            del self._revision[:-1]

    def set_fetched(self, source: str, at: float) -> None:
        with self._buffer:
            self._fetched[source] = at
            self._fetched_at[source] = at

    def flush(self) -> None:
        """Commit the buffered writes in one transaction. Safe to call on another
        thread than the one writing to the buffers: it takes them at once and
        writes what it took; flushes run one at a time, in the order taken."""
        if self._db is None or self.readonly:
            return
        with self._writing:
            batch = self._take()
            if batch is None:
                return
            db = self._db
            assert db is not None
            try:
                write(db, batch, self._rows, self.history_limit)
            except BaseException:
                self._put_back(batch)  # written by the next flush, as before the take
                raise

    def _take(self) -> Batch | None:
        with self._buffer:
            if not (
                self._dirty_status
                or self._dirty_resources
                or self._forgotten
                or self._events
                or self._revisions
                or self._fetched
            ):
                return None
            batch = Batch(
                self._dirty_status,
                self._dirty_resources,
                self._forgotten,
                self._events,
                self._revisions,
                self._fetched,
            )
            self._dirty_status, self._dirty_resources, self._forgotten = set(), set(), set()
            self._events, self._revisions, self._fetched = [], [], {}
        return batch

    def _put_back(self, batch: Batch) -> None:
        with self._buffer:
            self._dirty_status |= batch.status
            self._dirty_resources |= batch.resources
            # a resource written again since it was forgotten stays
            self._forgotten |= {rid for rid in batch.forgotten if rid not in self._rows}
            self._events[:0] = batch.events
            self._revisions[:0] = batch.revisions
            self._fetched = {**batch.fetched, **self._fetched}

    def close(self) -> None:
        with self._writing:
            try:
                self.flush()
            finally:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                self._unlock()
