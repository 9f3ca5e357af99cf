"""State store: the interfaces (`base`), the buffered writes both databases
share (`buffered`), the SQLite implementation (`sqlite`, the default) and the
PostgreSQL one (`postgres`, `--state-url`), their asynchronous face for the
daemon (`offloop`) and the daemon's way to open one (`factory`)."""

from reconciler.store.base import AsyncStore, Fenced, Record, Store, StoreError, Transition
from reconciler.store.factory import open_async_store
from reconciler.store.offloop import OffLoopStore
from reconciler.store.postgres import PostgresStore
from reconciler.store.sqlite import SqliteStore, StoreLocked

__all__ = [
    "AsyncStore",
    "Fenced",
    "OffLoopStore",
    "PostgresStore",
    "Record",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreLocked",
    "Transition",
    "open_async_store",
]
