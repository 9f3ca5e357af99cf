"""The PostgreSQL state store (`--state-url`): the same buffered store as
SQLite's, its database shared by several daemons (decisions 0144-0146).

What it adds to `BufferedStore`: a connection (psycopg's synchronous one, used
from the store's thread through `OffLoopStore`, and from the engine's flushes
under `_writing`, so one thread at a time), the schema migrated at open
(`_pgschema`), a shard (every row is keyed by it; this store sees only its
own) and an epoch: each flush tells the database the epoch of this writer's
lease, and the fence refuses the whole transaction when the lease has moved on
(`Fenced`). A lost connection is reopened by the next call; the flush that
found it lost keeps its batch for the next one, as any failed flush does.
`run_records` keeps providers' run records (a guard-less Command's last run)
in the database too, fenced the same way, so a new leader sees them.

No state-directory lock: with PostgreSQL, who writes is the lease's business
(reconciler.ha); without an election the store writes with no epoch, which the
fence allows until some daemon has taken the shard's lease.

The password never leaves this module: it comes from a file or libpq's
environment, never the URL shown, and every error is scrubbed of it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import conninfo

from reconciler.model import PermanentError, TemporaryError
from reconciler.secrets import redact
from reconciler.store import _pgio
from reconciler.store._pgschema import migrate
from reconciler.store.base import Fenced, Record, StoreError, Transition
from reconciler.store.buffered import Batch, BufferedStore

__all__ = ["PgRunRecords", "PostgresStore"]

FENCED = "RC001"
"""The SQLSTATE the fence raises."""

_DEFAULTS = {
    "connect_timeout": "10",
    "application_name": "reconciler",
    # a dead peer is noticed in ~20 s even mid-statement, not after TCP's hours
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
}
IDLE_IN_TRANSACTION = 5_000
"""Milliseconds a session may sit in an open transaction without a statement
before the server ends it (decision 0157): a leader stopped (SIGSTOP, a frozen
VM) in the middle of a flush holds the lease row `FOR SHARE`, which would keep
every standby's takeover waiting for as long as it stays stopped."""


class PostgresStore(BufferedStore):
    """The state of one shard in a PostgreSQL database."""

    def __init__(
        self,
        url: str,
        *,
        shard: str = "default",
        password: str | None = None,
        history_limit: int = 50_000,
    ) -> None:
        super().__init__(history_limit=history_limit)
        self.url = url
        self.where = redact(url)
        """The URL as errors and logs show it."""
        self.shard = shard
        self._password = password
        self._secrets = [s for s in (password, _url_password(url)) if s]
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._seq = 0
        """The newest event's number in this shard (events are numbered per shard)."""
        self._connecting = threading.Lock()
        self.run_records = PgRunRecords(self)
        with self._writing:
            conn = self._connect()
            try:
                with self._errors():
                    migrate(conn, self.where)
                    self._seq = _pgio.last_seq(conn, shard)
            except BaseException:
                self._db_close()
                raise

    # the connection

    def _connect(self) -> psycopg.Connection[Any]:
        """The open connection, opened (again) if need be."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if self._closed:
            raise StoreError(f"state database {self.where}: closed")
        if conn is not None:
            conn.close()
        params = conninfo.conninfo_to_dict(self.url) if self.url else {}
        extra = {key: value for key, value in _DEFAULTS.items() if key not in params}
        if self._password is not None:
            extra["password"] = self._password
        timeout = f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION}"
        extra["options"] = f"{params['options']} {timeout}" if params.get("options") else timeout
        with self._errors():
            self._conn = psycopg.connect(conninfo.make_conninfo(self.url, **extra), autocommit=True)
        return self._conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turns psycopg's errors into the store's: `Fenced` for the fence, else
        `StoreError` naming the (redacted) database, the password scrubbed."""
        try:
            yield
        except psycopg.Error as exc:
            text = str(exc).strip()
            message = self._scrub(text.splitlines()[0] if text else "")
            if exc.sqlstate == FENCED:
                raise Fenced(f"state database {self.where}: {message}") from None
            raise StoreError(
                f"state database {self.where}: {message or type(exc).__name__}"
            ) from None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return redact(text)

    def mark(self) -> object:
        """The shard's newest event number: every write a leader makes to the
        records comes with a transition, so an unchanged number means nothing to
        read again."""
        with self._writing, self._errors():
            return _pgio.last_seq(self._connect(), self.shard)

    def shared_key(self, name: str) -> bytes | None:
        """The key `name` every daemon of this database shares (decision 0156)."""
        with self._writing, self._errors():
            return _pgio.shared_key(self._connect(), name)

    # the database (BufferedStore's hooks, called holding _writing)

    def _db_open(self) -> bool:
        return not self._closed

    def _db_read_all(self) -> dict[str, Record]:
        with self._errors():
            conn = self._connect()
            records = _pgio.read_all(conn, self.shard)
            self._seq = _pgio.last_seq(conn, self.shard)
        return records

    def _db_newest_revision(self) -> str | None:
        with self._errors():
            return _pgio.newest_revision(self._connect(), self.shard)

    def _db_last_success(self, source: str) -> float | None:
        with self._errors():
            return _pgio.last_success(self._connect(), self.shard, source)

    def _db_last_event_times(self, ids: set[str], event: str) -> dict[str, float]:
        with self._errors():
            return _pgio.last_event_times(self._connect(), self.shard, ids, event)

    def _db_history(
        self,
        rid: str | None,
        limit: int,
        kind: str | None,
        since: float | None,
        instance: str | None,
    ) -> list[Transition]:
        with self._errors():
            return _pgio.history(self._connect(), self.shard, rid, limit, kind, since, instance)

    def _db_write(self, batch: Batch) -> None:
        epoch = self.epoch  # read once: a set_epoch meanwhile is the next flush's
        with self._errors():
            self._seq = _pgio.write(
                self._connect(),
                self.shard,
                epoch,
                batch,
                self._rows,
                self._seq + 1,
                self.history_limit,
            )

    def _db_close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PgRunRecords:
    """`RunRecords` (reconciler.model) in `reconciler_runs`, this store's shard
    only: each call on the caller's thread under the store's connection lock
    (`_writing`, so never beside a flush), a put or a drop its own transaction
    as the writer of the store's epoch, so the fence refuses a deposed leader's
    (decision 0151). Errors become the providers' (`PermanentError` for a write,
    `TemporaryError` for a read), naming the redacted database."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def get_many(self, keys: Sequence[str]) -> list[Mapping[str, Any] | None]:
        store = self._store
        try:
            with store._writing, store._errors():
                found = _pgio.get_runs(store._connect(), store.shard, keys)
        except StoreError as exc:
            raise TemporaryError(f"cannot read the run records: {exc}") from None
        return list(found)

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        store = self._store
        try:
            with store._writing, store._errors():
                _pgio.put_run(store._connect(), store.shard, store.epoch, key, record)
        except StoreError as exc:  # Fenced included: a newer leader holds the lease
            raise PermanentError(str(exc)) from None

    def drop(self, key: str) -> None:
        store = self._store
        try:
            with store._writing, store._errors():
                _pgio.drop_run(store._connect(), store.shard, store.epoch, key)
        except StoreError as exc:
            raise PermanentError(str(exc)) from None


def _url_password(url: str) -> str | None:
    try:
        password = conninfo.conninfo_to_dict(url).get("password") if url else None
    except psycopg.Error:
        return None
    return None if password is None else str(password)
