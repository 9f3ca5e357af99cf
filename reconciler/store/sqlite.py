"""SQLite implementation of the state store, in WAL mode under the state directory.

Writes are buffered in memory and committed by `flush` in one transaction: the
engine flushes before every side effect (so intent is durable before a create)
and at the end of a pass. Losing an unflushed tail in a crash is harmless: it
holds only transitions of resources that are re-detected on restart anyway.
A lock file keeps a second process off the same state directory.

Threads (decision 0119): the buffered writes and `inventory` are made on the
caller's thread (the daemon's event loop) and only touch memory; `flush` and the
reads that query the database may run on another thread at the same time, which
is how the daemon keeps SQLite off its loop (`store.offloop`). Two locks,
`BufferedStore`'s (buffered.py), make that safe: `_buffer` guards the write
buffers for the instant a flush swaps them out, and `_writing` keeps one thread
at a time on the connection, so batches are written in the order they were
taken. The revision and fetch times last written are kept in memory, so the
engine's and the daemon's look at them never waits for a flush.

The buffers and the locks are `buffered.BufferedStore`'s, shared with the
PostgreSQL store; this module holds the connection and the state directory's
lock, and the SQL is beside it: `_queries` (the reads), `_batches` (the batch a
flush writes), `_rows` (migrations and rows).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from reconciler.store import _queries
from reconciler.store._batches import transaction, write
from reconciler.store._rows import MIGRATIONS, SCHEMA_VERSION
from reconciler.store.base import Record, StoreError, Transition
from reconciler.store.buffered import Batch, BufferedStore

__all__ = ["DB_NAME", "SCHEMA_VERSION", "SqliteStore", "StoreLocked"]

DB_NAME = "state.db"
LOCK_NAME = "lock"


class StoreLocked(StoreError):
    pass


class SqliteStore(BufferedStore):
    def __init__(
        self, state_dir: Path, *, readonly: bool = False, history_limit: int = 50_000
    ) -> None:
        super().__init__(readonly=readonly, history_limit=history_limit)
        self.path = state_dir / DB_NAME
        self._lock_fd: int | None = None
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

    # the database (BufferedStore's hooks, called holding _writing)

    def _db_open(self) -> bool:
        return self._db is not None

    def _db_read_all(self) -> dict[str, Record]:
        assert self._db is not None
        return _queries.read_all(self._db)

    def _db_newest_revision(self) -> str | None:
        assert self._db is not None
        return _queries.newest_revision(self._db)

    def _db_last_success(self, source: str) -> float | None:
        assert self._db is not None
        return _queries.last_success(self._db, source)

    def _db_last_event_times(self, ids: set[str], event: str) -> dict[str, float]:
        assert self._db is not None
        return _queries.last_event_times(self._db, ids, event)

    def _db_history(
        self,
        rid: str | None,
        limit: int,
        kind: str | None,
        since: float | None,
        instance: str | None,
    ) -> list[Transition]:
        assert self._db is not None
        return _queries.history(self._db, rid, limit, kind, since, instance)

    def _db_write(self, batch: Batch) -> None:
        assert self._db is not None
        write(self._db, batch, self._rows, self.history_limit)

    def _db_close(self) -> None:
        try:
            if self._db is not None:
                self._db.close()
                self._db = None
        finally:
            self._unlock()
