"""Opening the daemon's store: SQLite in the state directory by default, or
PostgreSQL with `--state-url` (decision 0144)."""

from __future__ import annotations

import functools
from pathlib import Path

from reconciler.secrets import MAX_SECRET_FILE, FileUnread, read_small_file, redact
from reconciler.store.base import StoreError
from reconciler.store.offloop import OffLoopStore
from reconciler.store.postgres import PostgresStore

__all__ = ["open_async_store", "read_password"]


def read_password(path: Path) -> str:
    """The stripped first line of a password file; a missing, unreadable, empty
    or oversized file, or one that is not a regular file, is a store error."""
    try:
        text = read_small_file(path, MAX_SECRET_FILE)
    except FileUnread as exc:
        raise StoreError(f"state password file {path}: {exc}") from None
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise StoreError(f"state password file {path} is empty")
    return lines[0].strip()


async def open_async_store(
    state_dir: Path,
    state_url: str | None,
    *,
    shard: str = "default",
    password_file: Path | None = None,
    history_limit: int = 50_000,
) -> OffLoopStore:
    """The daemon's store, opened (migrated) and its inventory read, all on the
    store's thread: a `SqliteStore` in `state_dir` (its lock taken) without
    `state_url`, else a `PostgresStore` of `shard` (no lock: the lease decides
    who writes). The password comes from `password_file` or libpq's
    environment (PGPASSWORD, PGPASSFILE), never from what is logged."""
    if not state_url:
        return await OffLoopStore.opening(state_dir, history_limit=history_limit)
    password = None if password_file is None else read_password(password_file)
    if not state_url.startswith(("postgresql://", "postgres://")):
        raise StoreError(f"--state-url {redact(state_url)}: not a postgresql:// URL")
    return await OffLoopStore.opened_by(
        functools.partial(
            PostgresStore,
            state_url,
            shard=shard,
            password=password,
            history_limit=history_limit,
        )
    )
