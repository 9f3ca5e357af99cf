"""A store as an `AsyncStore`: its database work on a thread of its own.

SQLite's client blocks (and the PostgreSQL store uses psycopg's synchronous
connection: one code path for both), so the daemon never calls it on its event
loop: opening (migrations, the state directory's lock), reading the inventory
once, flushing, reloading and every query run on one dedicated thread, the
store's, one call after another (decision 0119). The buffered writes and
`inventory` stay plain calls on the loop: they only touch memory, and
`BufferedStore` lets a flush on the store's thread take its buffers while the
loop goes on writing.

The engine keeps the synchronous `Store` (`sync`): its writes are buffered on the
loop as before, and the daemon's engine flushes through `asyncio.to_thread`,
which `BufferedStore`'s locks make safe beside this thread.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from reconciler.store.base import Transition
from reconciler.store.buffered import BufferedStore
from reconciler.store.sqlite import SqliteStore

__all__ = ["OffLoopStore"]

T = TypeVar("T")


class OffLoopStore:
    """An `AsyncStore` over a `SqliteStore` or a `PostgresStore`; `sync` is that
    store, for the engine."""

    def __init__(self, store: BufferedStore, thread: ThreadPoolExecutor | None = None) -> None:
        self.sync = store
        self._thread = thread or ThreadPoolExecutor(1, thread_name_prefix="store")
        # in memory, on the caller's thread: the store's own calls (BufferedWrites)
        self.inventory = store.inventory
        self.state_counts = store.state_counts
        self.ids = store.ids
        self.record = store.record
        self.states = store.states
        self.transition = store.transition
        self.intend = store.intend
        self.converged = store.converged
        self.schedule_retry = store.schedule_retry
        self.forget = store.forget
        self.set_revision = store.set_revision
        self.set_fetched = store.set_fetched
        # on the caller's thread (a provider's, through asyncio.to_thread), under
        # the store's connection lock: None with SQLite
        self.run_records = store.run_records

    @classmethod
    async def opening(cls, state_dir: Path, *, history_limit: int = 50_000) -> OffLoopStore:
        """Open a `SqliteStore` on the store's thread (it migrates and takes the
        state directory's lock) and read its inventory there."""
        return await cls.opened_by(
            functools.partial(SqliteStore, state_dir, history_limit=history_limit)
        )

    @classmethod
    async def opened_by(cls, make: Callable[[], BufferedStore]) -> OffLoopStore:
        """The store `make` opens (connects, migrates), made on the store's thread,
        its inventory read there; the thread ends if it cannot be made."""
        thread = ThreadPoolExecutor(1, thread_name_prefix="store")
        try:
            store = await asyncio.get_running_loop().run_in_executor(thread, make)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        opened = cls(store, thread)
        await opened.open()
        return opened

    async def _call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    # on the store's thread

    async def open(self) -> None:
        await self._call(self.sync.inventory)

    async def flush(self) -> None:
        await self._call(self.sync.flush)

    async def reload(self) -> None:
        """Drop what is in memory (unflushed writes too) and read the inventory
        again: a standby's view, a new leader's first step."""
        await self._call(self.sync.reload)

    async def mark(self) -> object:
        """What changes when another process writes the records (None: unknown)."""
        return await self._call(self.sync.mark)

    async def shared_key(self, name: str) -> bytes | None:
        """The key `name` shared by every daemon of the database (None: SQLite)."""
        return await self._call(self.sync.shared_key, name)

    def set_epoch(self, epoch: int | None) -> None:
        """The lease's epoch every later flush carries (None: no election);
        memory only: a flush in flight keeps the epoch it began with."""
        self.sync.set_epoch(epoch)

    async def last_revision(self) -> str | None:
        return await self._call(self.sync.last_revision)

    async def last_fetched(self, source: str) -> float | None:
        return await self._call(self.sync.last_fetched, source)

    async def last_events(self, ids: Collection[str], event: str) -> dict[str, float]:
        return await self._call(self.sync.last_events, list(ids), event)

    async def history(
        self,
        rid: str | None = None,
        limit: int = 100,
        *,
        kind: str | None = None,
        since: float | None = None,
        instance: str | None = None,
    ) -> list[Transition]:
        return await self._call(
            self.sync.history, rid, limit, kind=kind, since=since, instance=instance
        )

    async def close(self) -> None:
        try:
            await self._call(self.sync.close)
        finally:
            self._thread.shutdown(wait=False)
