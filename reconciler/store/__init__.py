"""State store: the interface (`base`) and its SQLite implementation (`sqlite`)."""

from reconciler.store.base import Record, Store, StoreError, Transition
from reconciler.store.sqlite import SqliteStore, StoreLocked

__all__ = ["Record", "SqliteStore", "Store", "StoreError", "StoreLocked", "Transition"]
