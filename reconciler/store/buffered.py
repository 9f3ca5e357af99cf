"""What every store does in memory, whatever its database: the records, the
buffered writes and the locks that let a flush on another thread take them.

`BufferedStore` holds the inventory read once from the database, the rows the
writes change in place, the state counts and the write buffers; a flush takes
the buffers under `_buffer` and writes them under `_writing` (decision 0119).
A database is a subclass: `SqliteStore` (sqlite.py) and `PostgresStore`
(postgres.py) implement the few hooks below (read everything, the reads that
outlive a restart, write one batch, close), always called holding `_writing`,
so one thread at a time is on the connection and batches are written in the
order they were taken.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

from reconciler.fsm import State
from reconciler.model import RunRecords
from reconciler.store._rows import Row, empty
from reconciler.store.base import Record, Transition

__all__ = ["Batch", "BufferedStore", "Event"]

Event = tuple[float, str, State | None, State, str, str | None, str]
"""A history row: ts, id, from_state, to_state, event, reason, instance."""


@dataclass(slots=True)
class Batch:
    """The write buffers as one flush took them."""

    status: set[str]
    resources: set[str]
    forgotten: set[str]
    events: list[Event]
    revisions: list[tuple[str, float]]
    fetched: dict[str, float]


class BufferedStore:
    """The buffered writes and the inventory of a store; a subclass is its
    database (the `_db_*` hooks)."""

    def __init__(self, *, readonly: bool = False, history_limit: int = 50_000) -> None:
        self.readonly = readonly
        self.history_limit = history_limit
        self.epoch: int | None = None
        """The writer's epoch (`set_epoch`): what a fenced database checks."""
        self.run_records: RunRecords | None = None
        """Providers' run records in the database, when several daemons share it
        (PostgreSQL); None: providers keep theirs in the state directory."""
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

    # the database (called holding _writing)

    def _db_open(self) -> bool:
        """Whether there is a database to read and write."""
        raise NotImplementedError

    def _db_read_all(self) -> dict[str, Record]:
        raise NotImplementedError

    def _db_newest_revision(self) -> str | None:
        raise NotImplementedError

    def _db_last_success(self, source: str) -> float | None:
        raise NotImplementedError

    def _db_last_event_times(self, ids: set[str], event: str) -> dict[str, float]:
        raise NotImplementedError

    def _db_history(
        self,
        rid: str | None,
        limit: int,
        kind: str | None,
        since: float | None,
        instance: str | None,
    ) -> list[Transition]:
        raise NotImplementedError

    def _db_write(self, batch: Batch) -> None:
        """Write `batch` in one transaction (the rows' values from `_rows`)."""
        raise NotImplementedError

    def _db_close(self) -> None:
        raise NotImplementedError

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
                loaded = self._db_read_all() if self._db_open() else {}
            self._states = Counter(record.state for record in loaded.values())
            self._loaded = loaded
        return self._loaded

    def mark(self) -> object:
        """Something that changes when another process writes this store's records
        (PostgreSQL: the newest event's number); None: no such mark, a standby's
        view is read again each time."""
        return None

    def shared_key(self, name: str) -> bytes | None:
        """A key every daemon of a shared database holds alike (PostgreSQL's), or
        None: a store of one daemon has its state directory's keys."""
        return None

    def reload(self) -> None:
        """Forget what is in memory, unflushed writes included, and read the
        records again from the database: a standby's view of what the leader
        wrote, and a new leader's first step."""
        with self._writing, self._buffer:
            self._loaded = None
            self._rows, self._changed = {}, set()
            self._dirty_status, self._dirty_resources, self._forgotten = set(), set(), set()
            self._events, self._revisions, self._fetched = [], [], {}
            self._revision, self._fetched_at = [], {}
            self._reloading()
        self._records()

    def _reloading(self) -> None:
        """What a database keeps in memory besides the records, dropped by `reload`."""

    def set_epoch(self, epoch: int | None) -> None:
        """The epoch of this writer's lease (None: no election); the next flush
        carries it (a flush in flight keeps the one it read when it began, so
        this never waits). A database without fencing keeps it only to say it."""
        self.epoch = epoch

    def last_revision(self) -> str | None:
        if not self._revision:
            with self._writing:
                newest = self._db_newest_revision() if self._db_open() else None
            if not self._revision:  # set_revision on another thread meanwhile wins
                self._revision.append(newest)
        return self._revision[-1]

    def last_fetched(self, source: str) -> float | None:
        """When `source` (its redacted URL) was last fetched successfully, in any
        process that used this store; None if never."""
        if source not in self._fetched_at:
            with self._writing:
                at = self._db_last_success(source) if self._db_open() else None
            self._fetched_at.setdefault(source, at)
        return self._fetched_at[source]

    def last_events(self, ids: Collection[str], event: str) -> dict[str, float]:
        """When each of `ids` last had a transition by `event`, from the history
        (an id whose history holds none, or was trimmed away, is missing)."""
        found: dict[str, float] = {}
        wanted = set(ids)
        with self._writing:  # a flush in flight lands first: its events are in the table
            if self._db_open() and wanted:
                found = self._db_last_event_times(wanted, event)
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
            if not self._db_open():
                return []
            return self._db_history(rid, limit, kind, since, instance)

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
            self._intended(rid, spec, policy, deps, created, instance)

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
            row = self._intended(rid, spec, policy, deps, created, instance)
            row.spec_hash, row.attempts, row.next_attempt = spec_hash, 0, None
            self._dirty_status.add(rid)

    def _intended(
        self,
        rid: str,
        spec: str,
        policy: str,
        deps: tuple[str, ...],
        created: bool | None,
        instance: str,
    ) -> Row:
        """Record the spec fields of `rid`'s row (holding `_buffer`, after
        `_ready`): what `intend` writes, and `converged` besides its own."""
        row = self._row(rid)
        row.spec, row.policy, row.deps, row.created = spec, policy, deps, created
        row.instance = instance
        self._dirty_resources.add(rid)
        return row

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
        if self.readonly:
            return
        with self._writing:
            if not self._db_open():
                return
            batch = self._take()
            if batch is None:
                return
            try:
                self._db_write(batch)
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
                self._db_close()
