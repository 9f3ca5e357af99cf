"""The state store interface the engine depends on, and its records.

The store holds the inventory (what reconciler manages and whether it created
each object), each resource's status, the revisions applied, when each source
was last fetched and a bounded history of transitions. SQLite implements it
and PostgreSQL (issue 13) implement it.

Two protocols (decision 0119). `Store` is the synchronous one the one-shot
commands and the engine use. `AsyncStore` is the daemon's: everything that waits
for the database is a coroutine, so nothing the daemon asks of the store holds
its event loop; what only touches memory stays a plain call. `offloop.OffLoopStore`
gives a `SqliteStore` or a `PostgresStore` that shape (their I/O on one thread
of their own; decision 0144).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from reconciler.fsm import State


class StoreError(Exception):
    pass


class Fenced(StoreError):
    """A flush refused by the database: the shard's lease has moved to a newer
    epoch than this writer's (another daemon leads now); nothing of it was written."""


@dataclass(frozen=True, slots=True)
class Record:
    """One managed resource as last recorded."""

    id: str
    kind: str
    name: str
    spec_hash: str | None
    """Hash of the last spec that converged; None until one has."""
    spec: str | None
    """JSON of the last spec reconciler acted on, kept for deletion."""
    policy: str | None
    deps: tuple[str, ...]
    created: bool | None
    """True: created by reconciler (deleted on prune); False: adopted (released)."""
    state: State
    last_transition: float
    last_error: str | None
    attempts: int
    next_attempt: float | None
    instance: str = ""
    """The bundle instance that made the resource (`Bundle/team-a-web`), as of the
    last spec recorded; "" for a resource written flat. Kept after the instance
    left the desired state, so its prune still says where the resource came from."""


@dataclass(frozen=True, slots=True)
class Transition:
    seq: int
    ts: float
    id: str
    kind: str
    from_state: State | None
    to_state: State
    event: str
    reason: str | None
    instance: str = ""
    """The resource's bundle instance when the transition was recorded ("" flat)."""

    def to_json(self) -> dict[str, object]:
        """The event as `/api/v1/events` and `reconciler events --json` show it."""
        return {
            "seq": self.seq,
            "at": self.ts,
            "id": self.id,
            "from": None if self.from_state is None else self.from_state.value,
            "to": self.to_state.value,
            "event": self.event,
            "reason": self.reason,
            "instance": self.instance or None,
        }


class BufferedWrites(Protocol):
    """What both stores do in memory, never waiting: the records and the
    buffered writes a flush makes durable."""

    def inventory(self) -> dict[str, Record]: ...

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
        """Record a transition (and the status it leaves); `error` None clears it.
        `instance`, when given, becomes the record's instance (a resource's first
        transitions come before any spec is recorded); None keeps it, as a prune
        does. The transition carries the record's instance. Returns its time (unix
        seconds), which becomes the record's last_transition."""

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
        """Record the spec about to be acted on (buffered), and the bundle instance
        it came from; the caller flushes before the side effect, so intent is
        durable before any object exists."""

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
        """Record that `spec_hash` converged (buffered, no flush needed), and the
        bundle instance the spec came from."""

    def schedule_retry(self, rid: str, attempts: int, next_attempt: float | None) -> None: ...

    def forget(self, rid: str) -> None: ...

    def set_revision(self, revision: str) -> None: ...

    def set_fetched(self, source: str, at: float) -> None:
        """Record a successful fetch of `source` (a redacted URL) at `at` (buffered)."""


class Store(BufferedWrites, Protocol):
    """The state store as the engine and the one-shot commands use it."""

    def last_revision(self) -> str | None:
        """The revision of the last pass started (a revision that loaded and was
        not refused): what the daemon enforces again after a restart whose first
        fetch is rejected."""

    def last_fetched(self, source: str) -> float | None:
        """The time of the last successful fetch of `source`, across restarts."""

    def last_events(self, ids: Collection[str], event: str) -> dict[str, float]:
        """When each of `ids` last had a transition by `event` (from the bounded
        history: an id whose history holds none is missing)."""
        ...

    def history(
        self,
        rid: str | None = None,
        limit: int = 100,
        *,
        kind: str | None = None,
        since: float | None = None,
        instance: str | None = None,
    ) -> list[Transition]: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class AsyncStore(BufferedWrites, Protocol):
    """The state store as the daemon uses it on its event loop.

    Memory only, never waiting (a plain call): the buffered writes, exactly as in
    `Store`, and `inventory`, the records as of now, read from the database once
    by `open` (with `ids`, `record`, `states` and `state_counts`, which read them
    without copying them all). Everything that may wait for the database is a coroutine: `open`,
    `flush`, the reads of the history and of what outlives a restart, `close`.

    What an implementation promises:

    - Buffered writes are kept in memory in the order made; `flush` returns once
      every write made before it was called is durable (committed in one
      transaction), and flushes complete in the order they were called.
    - Reads see every write made before them, flushed or not (`history` flushes
      first).
    - `inventory` after `open` is a copy the caller may keep; it never waits.
    - No call blocks the event loop for longer than copying memory: a database
      client that blocks runs on a thread of its own (`OffLoopStore`: SQLite, and
      PostgreSQL on psycopg's synchronous connection, whose `flush` is one
      transaction of a few array statements).
    """

    def ids(self) -> list[str]:
        """Every record's id, without building the records."""
        ...

    def record(self, rid: str) -> Record | None:
        """One record as of now (None: no such resource)."""
        ...

    def states(self) -> dict[str, State]:
        """Every record's state, without building the records (for a scrape)."""
        ...

    def state_counts(self) -> dict[State, int]:
        """How many records are in each state, kept up to date by the writes: the
        daemon's status reads it at every call, and counting the inventory there
        would cost the loop ~10 ms at 12,000 resources."""

    async def open(self) -> None:
        """Read the inventory into memory (before the first `inventory` call)."""

    async def flush(self) -> None: ...

    async def last_revision(self) -> str | None: ...

    async def last_fetched(self, source: str) -> float | None: ...

    async def last_events(self, ids: Collection[str], event: str) -> dict[str, float]: ...

    async def history(
        self,
        rid: str | None = None,
        limit: int = 100,
        *,
        kind: str | None = None,
        since: float | None = None,
        instance: str | None = None,
    ) -> list[Transition]: ...

    async def close(self) -> None:
        """Flush and release the database (and the state directory's lock)."""
