"""State store: the interfaces (`base`), the SQLite implementation (`sqlite`)
and its asynchronous face for the daemon (`offloop`)."""

from reconciler.store.base import AsyncStore, Record, Store, StoreError, Transition
from reconciler.store.offloop import OffLoopStore
from reconciler.store.sqlite import SqliteStore, StoreLocked

__all__ = [
    "AsyncStore",
    "OffLoopStore",
    "Record",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreLocked",
    "Transition",
]
