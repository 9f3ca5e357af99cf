"""One conformance suite for the state store, run on SQLite and on a real
PostgreSQL: the buffered-writes contract of `base.AsyncStore`, the history and
its bound, what outlives a reopen, forget, instances, `reload`; then what only
a shared database has: shards, migrations under a lock, and fencing."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconciler.fsm import State
from reconciler.secrets import MAX_SECRET_FILE
from reconciler.store import Fenced, OffLoopStore, PostgresStore, StoreError, open_async_store
from reconciler.store._pgschema import SCHEMA_VERSION as PG_SCHEMA
from reconciler.store.buffered import BufferedStore
from reconciler.store.sqlite import DB_NAME, SCHEMA_VERSION
from tests.store.backends import Backend

S = State
pytestmark = pytest.mark.timeout(60)


@contextmanager
def opened(backend: Backend, **kwargs: Any) -> Iterator[BufferedStore]:
    store = backend.open(**kwargs)
    try:
        yield store
    finally:
        store.close()


def _converge(store: BufferedStore, rid: str, *, instance: str = "") -> None:
    store.transition(rid, None, S.PENDING, "start", instance=instance)
    store.intend(rid, '{"a": 1}', "{}", (), True, instance=instance)
    store.converged(rid, "h1", '{"a": 1}', "{}", ("Directory/d",), True, instance=instance)
    store.transition(rid, S.PENDING, S.IN_SYNC, "applied")


# --- the buffered writes ----------------------------------------------------------


def test_reads_see_unflushed_writes(backend: Backend) -> None:
    with opened(backend) as store:
        _converge(store, "File/a")
        store.transition("File/b", None, S.PENDING, "start")
        store.schedule_retry("File/b", 3, 99.0)
        store.set_revision("rev1")
        store.set_fetched("git://x", 12.5)
        assert store.ids() == ["File/a", "File/b"] or set(store.ids()) == {"File/a", "File/b"}
        a = store.record("File/a")
        assert a is not None and (a.spec_hash, a.created, a.deps) == ("h1", True, ("Directory/d",))
        assert a.state is S.IN_SYNC
        b = store.inventory()["File/b"]
        assert (b.state, b.attempts, b.next_attempt) == (S.PENDING, 3, 99.0)
        assert store.states() == {"File/a": S.IN_SYNC, "File/b": S.PENDING}
        assert store.state_counts() == {S.IN_SYNC: 1, S.PENDING: 1}
        assert store.last_revision() == "rev1"
        assert store.last_fetched("git://x") == 12.5
        assert set(store.last_events(["File/a", "File/b"], "start")) == {"File/a", "File/b"}
        # history flushes first
        assert [t.event for t in store.history("File/a")] == ["start", "applied"]


def test_inventory_is_a_copy(backend: Backend) -> None:
    with opened(backend) as store:
        _converge(store, "File/a")
        inventory = store.inventory()
        inventory.clear()
        store.transition("File/a", S.IN_SYNC, S.DETECTING, "resync")
        assert inventory == {}
        assert store.inventory()["File/a"].state is S.DETECTING


def test_flush_makes_every_earlier_write_durable_in_order(backend: Backend) -> None:
    with opened(backend) as store:
        _converge(store, "File/a")
        store.flush()
        store.transition("File/a", S.IN_SYNC, S.DETECTING, "resync")
        store.transition("File/a", S.DETECTING, S.FAILED, "error", error="boom")
        store.flush()
        store.flush()  # nothing left: a no-op
    with opened(backend) as again:
        a = again.inventory()["File/a"]
        assert (a.state, a.last_error) == (S.FAILED, "boom")
        events = again.history("File/a")
        assert [t.event for t in events] == ["start", "applied", "resync", "error"]
        assert [t.seq for t in events] == sorted(t.seq for t in events)


async def test_async_flushes_complete_in_the_order_called(backend: Backend) -> None:
    store = OffLoopStore(backend.open())
    await store.open()
    try:
        flushes = []
        for n in range(20):
            store.transition("File/a", None, S.DETECTING, f"e{n}")
            store.schedule_retry("File/a", n, None)
            flushes.append(asyncio.ensure_future(store.flush()))
        # the engine flushes from another thread at the same time
        store.transition("File/a", S.DETECTING, S.IN_SYNC, "last")
        await asyncio.gather(asyncio.to_thread(store.sync.flush), *flushes)
        assert [t.event for t in await store.history("File/a", 100)][-1] == "last"
    finally:
        await store.close()
    with opened(backend) as again:
        a = again.inventory()["File/a"]
        assert (a.state, a.attempts) == (S.IN_SYNC, 19)
        assert [t.event for t in again.history("File/a", 100)] == [
            *(f"e{n}" for n in range(20)),
            "last",
        ]


def test_a_failed_flush_keeps_its_writes_for_the_next(backend: Backend) -> None:
    with opened(backend) as store:
        _converge(store, "File/a")
        _break(backend, store)
        with pytest.raises((StoreError, sqlite3.Error)):  # SQLite's own, as before
            store.flush()
        _mend(backend, store)
        store.flush()
    with opened(backend) as again:
        assert again.inventory()["File/a"].spec_hash == "h1"


def _break(backend: Backend, store: BufferedStore) -> None:
    """Make the next flush fail (a read-only database; a lost session)."""
    if isinstance(store, PostgresStore):
        backend.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    else:
        store.readonly = False
        store._db.execute("PRAGMA query_only = 1")  # type: ignore[attr-defined]


def _mend(backend: Backend, store: BufferedStore) -> None:
    if not isinstance(store, PostgresStore):
        store._db.execute("PRAGMA query_only = 0")  # type: ignore[attr-defined]
    # PostgreSQL: the next call reconnects by itself


# --- history ------------------------------------------------------------------


def test_history_is_bounded_newest_kept(backend: Backend) -> None:
    with opened(backend, history_limit=10) as store:
        for n in range(25):
            store.transition("File/a", None, S.DETECTING, f"e{n}")
            if n % 7 == 0:
                store.flush()
        events = store.history(limit=100)
        assert [t.event for t in events] == [f"e{n}" for n in range(15, 25)]
    with opened(backend, history_limit=10) as again:
        assert len(again.history(limit=100)) == 10
        again.transition("File/a", None, S.DETECTING, "after")
        assert [t.event for t in again.history(limit=100)][-2:] == ["e24", "after"]


def test_history_filters(backend: Backend) -> None:
    with opened(backend) as store:
        store.transition("File/a", None, S.PENDING, "start", instance="Bundle/one")
        store.transition("Directory/d", None, S.PENDING, "start")
        store.transition("File/b", None, S.PENDING, "start")
        store.flush()
        middle = store.history()[-1].ts
        store.transition("File/a", S.PENDING, S.DETECTING, "deps")
        assert [t.id for t in store.history("File/a")] == ["File/a", "File/a"]
        assert {t.id for t in store.history(kind="File")} == {"File/a", "File/b"}
        assert [t.event for t in store.history(since=middle)] == ["deps"]
        assert [t.id for t in store.history(instance="Bundle/one")] == ["File/a", "File/a"]
        assert [t.id for t in store.history(instance="")] == ["Directory/d", "File/b"]
        assert [t.event for t in store.history(limit=1)] == ["deps"]
        first = store.history("File/a")[0]
        assert (first.kind, first.from_state, first.to_state) == ("File", None, S.PENDING)
        assert first.to_json()["instance"] == "Bundle/one"


# --- across a reopen ----------------------------------------------------------------


def test_revision_fetch_and_events_outlive_a_reopen(backend: Backend) -> None:
    with opened(backend) as store:
        assert store.last_revision() is None and store.last_fetched("src") is None
        _converge(store, "File/a")
        store.set_revision("r1")
        store.set_revision("r2")
        store.set_fetched("src", 100.0)
        store.set_fetched("other", 50.0)
        store.flush()
        applied = store.last_events(["File/a"], "applied")["File/a"]
    with opened(backend) as again:
        assert again.last_revision() == "r2"
        assert (again.last_fetched("src"), again.last_fetched("other")) == (100.0, 50.0)
        assert again.last_events(["File/a", "File/zz"], "applied") == {"File/a": applied}
        assert again.last_events(["File/a"], "never") == {}
        assert again.inventory()["File/a"].state is S.IN_SYNC


def test_forget(backend: Backend) -> None:
    with opened(backend) as store:
        _converge(store, "File/a")
        _converge(store, "File/b")
        _converge(store, "File/c")
        store.flush()
        store.forget("File/a")
        store.forget("File/b")
        _converge(store, "File/b")  # written again after: stays
        assert set(store.ids()) == {"File/b", "File/c"}
        assert store.state_counts() == {S.IN_SYNC: 2}
        store.flush()
    with opened(backend) as again:
        assert set(again.inventory()) == {"File/b", "File/c"}
        # its history stays (events are not the inventory)
        assert again.history("File/a")


def test_instance_columns(backend: Backend) -> None:
    with opened(backend) as store:
        _converge(store, "File/a", instance="Bundle/team-a")
        store.transition("File/flat", None, S.PENDING, "start")
        store.flush()
        # a prune's transition keeps the instance (None)
        store.transition("File/a", S.IN_SYNC, S.PRUNING, "removed")
        store.flush()
    with opened(backend) as again:
        assert again.inventory()["File/a"].instance == "Bundle/team-a"
        assert again.inventory()["File/flat"].instance == ""
        assert {t.instance for t in again.history("File/a")} == {"Bundle/team-a"}


async def test_reload_drops_unflushed_writes_and_reads_the_database(backend: Backend) -> None:
    store = OffLoopStore(backend.open())
    await store.open()
    try:
        _converge(store.sync, "File/a")
        await store.flush()
        store.transition("File/a", S.IN_SYNC, S.DETECTING, "resync")
        store.transition("File/new", None, S.PENDING, "start")
        await store.reload()
        assert set(store.ids()) == {"File/a"}
        assert store.inventory()["File/a"].state is S.IN_SYNC
        assert store.state_counts() == {S.IN_SYNC: 1}
        await store.flush()  # nothing was left to write
        assert [t.event for t in await store.history("File/a")] == ["start", "applied"]
    finally:
        await store.close()


async def test_the_mark_moves_when_a_writer_records_a_transition(backend: Backend) -> None:
    """What a standby compares before reading the inventory again: PostgreSQL's
    moves with every flushed transition and only then; SQLite has none (None)."""
    store = OffLoopStore(backend.open())
    await store.open()
    try:
        before = await store.mark()
        if backend.server is None:
            assert before is None
            return
        store.set_fetched("git://x", 1.0)  # no transition: the records did not change
        await store.flush()
        assert await store.mark() == before
        _converge(store.sync, "File/a")
        await store.flush()
        after = await store.mark()
        assert after != before and await store.mark() == after
    finally:
        await store.close()


# --- opening ------------------------------------------------------------------------


def test_a_fresh_database_is_migrated(backend: Backend) -> None:
    with opened(backend) as store:
        assert store.inventory() == {}
    if backend.server is None:
        db = sqlite3.connect(backend.state_dir / DB_NAME)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.close()
    else:
        assert backend.sql("SELECT version FROM reconciler_schema") == [(PG_SCHEMA,)]
        tables = {r[0] for r in backend.sql("SELECT tablename FROM pg_tables")}
        assert {"reconciler_lease", "reconciler_resources", "reconciler_events"} <= tables


def test_a_newer_schema_is_refused(backend: Backend) -> None:
    backend.open().close()
    if backend.server is None:
        db = sqlite3.connect(backend.state_dir / DB_NAME)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
    else:
        backend.sql("UPDATE reconciler_schema SET version = %s", (PG_SCHEMA + 1,))
    with pytest.raises(StoreError, match=r"newer than this version's \d+: upgrade reconciler"):
        backend.open()


def test_two_stores_opening_at_once_migrate_once(pg: Backend) -> None:
    barrier = threading.Barrier(4)
    stores: list[BufferedStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            stores.append(pg.open())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == [] and len(stores) == 4
    assert pg.sql("SELECT version FROM reconciler_schema") == [(PG_SCHEMA,)]


def test_shards_share_a_database_each_seeing_its_own(pg: Backend) -> None:
    with opened(pg, shard="a") as a, opened(pg, shard="b") as b:
        _converge(a, "File/x")
        a.set_revision("ra")
        a.set_fetched("src", 1.0)
        a.flush()
        b.transition("File/x", None, S.FAILED, "error", error="b's")
        b.transition("File/y", None, S.PENDING, "start")
        b.set_revision("rb")
        b.flush()
    with opened(pg, shard="a") as a, opened(pg, shard="b") as b:
        assert set(a.inventory()) == {"File/x"} and a.inventory()["File/x"].state is S.IN_SYNC
        assert b.inventory()["File/x"].last_error == "b's" and set(b.inventory()) == {
            "File/x",
            "File/y",
        }
        assert (a.last_revision(), b.last_revision()) == ("ra", "rb")
        assert (a.last_fetched("src"), b.last_fetched("src")) == (1.0, None)
        assert [t.event for t in a.history()] == ["start", "applied"]
        assert [t.event for t in b.history()] == ["error", "start"]
        b.forget("File/x")
        b.flush()
    with opened(pg, shard="a") as a:
        assert set(a.inventory()) == {"File/x"}


# --- fencing (PostgreSQL) -------------------------------------------------------------


def _rows(pg: Backend) -> int:
    (count,) = pg.sql("SELECT count(*) FROM reconciler_resources")[0]
    (events,) = pg.sql("SELECT count(*) FROM reconciler_events")[0]
    return int(str(count)) + int(str(events))


def test_an_older_epoch_is_fenced_and_writes_nothing(pg: Backend) -> None:
    with opened(pg) as store:
        pg.sql("INSERT INTO reconciler_lease (shard, holder, epoch) VALUES ('default', 'b', 3)")
        store.set_epoch(2)
        _converge(store, "File/a")
        store.set_revision("r")
        with pytest.raises(Fenced, match="fenced: epoch 2, lease is at 3"):
            store.flush()
        assert _rows(pg) == 0
        store.set_epoch(None)  # no epoch at all: refused too, once a lease exists
        with pytest.raises(Fenced, match="epoch none, lease is at 3"):
            store.flush()
        assert _rows(pg) == 0
        store.set_epoch(3)
        store.flush()
    assert pg.sql("SELECT DISTINCT epoch FROM reconciler_resources") == [(3,)]
    assert pg.sql("SELECT DISTINCT epoch FROM reconciler_events") == [(3,)]


def test_no_epoch_writes_while_no_lease_was_taken(pg: Backend) -> None:
    with opened(pg) as store:
        pg.sql("INSERT INTO reconciler_lease (shard, epoch) VALUES ('other', 9)")
        pg.sql("INSERT INTO reconciler_lease (shard, epoch) VALUES ('default', 0)")
        _converge(store, "File/a")
        store.flush()
    assert pg.sql("SELECT epoch FROM reconciler_resources") == [(None,)]


def test_a_takeover_waits_for_the_flush_in_flight(pg: Backend) -> None:
    store = pg.open()
    pg.sql("INSERT INTO reconciler_lease (shard, holder, epoch) VALUES ('default', 'a', 1)")
    store.set_epoch(1)
    _converge(store, "File/a")
    assert pg.server is not None
    # hold the history table: the flush fences (FOR SHARE on the lease), writes
    # its resources, then waits on the events insert, in flight
    holder = pg.server.connect(pg.dbname or "")
    holder.autocommit = False
    holder.execute("LOCK TABLE reconciler_events IN EXCLUSIVE MODE")
    flushed: list[BaseException | None] = []
    flushing = threading.Thread(target=lambda: flushed.append(_flush(store)))
    flushing.start()
    _wait_for_lock_wait(pg, "INSERT INTO reconciler_events")
    taken: list[int] = []

    def take_over() -> None:
        rows = pg.sql("UPDATE reconciler_lease SET epoch = epoch + 1, holder = 'b' RETURNING epoch")
        taken.append(int(str(rows[0][0])))

    takeover = threading.Thread(target=take_over)
    takeover.start()
    _wait_for_lock_wait(pg, "UPDATE reconciler_lease")  # the takeover waits for the flush
    assert taken == []
    holder.rollback()  # the flush goes on and commits; then the takeover
    holder.close()
    flushing.join(30)
    takeover.join(30)
    assert flushed == [None] and taken == [2]
    assert pg.sql("SELECT epoch FROM reconciler_resources") == [(1,)]
    store.transition("File/a", S.IN_SYNC, S.DETECTING, "resync")
    with pytest.raises(Fenced):  # after the takeover
        store.flush()
    store.reload()  # as a deposed leader does: its fenced tail dropped, the new one's read
    assert store.inventory()["File/a"].state is S.IN_SYNC
    store.close()


def test_a_leader_stopped_inside_a_flush_cannot_hold_a_takeover_for_ever(pg: Backend) -> None:
    """A leader frozen (SIGSTOP) between two statements of a flush holds the lease
    row FOR SHARE; the server ends its session once it has idled in the
    transaction for IDLE_IN_TRANSACTION, so the takeover goes through."""
    from reconciler.store.postgres import IDLE_IN_TRANSACTION

    store = pg.open()
    assert isinstance(store, PostgresStore)
    pg.sql("INSERT INTO reconciler_lease (shard, holder, epoch) VALUES ('default', 'a', 1)")
    conn = store._connect()  # the store's own session, as a flush uses it: then frozen
    conn.execute("BEGIN")
    conn.execute("SELECT epoch FROM reconciler_lease WHERE shard = 'default' FOR SHARE")
    started = time.monotonic()
    assert pg.server is not None
    with pg.server.connect(pg.dbname or "") as other:
        other.execute("SET statement_timeout = '20s'")
        rows = other.execute(
            "UPDATE reconciler_lease SET epoch = epoch + 1, holder = 'b' RETURNING epoch"
        ).fetchall()
    waited = time.monotonic() - started
    assert rows == [(2,)]
    assert IDLE_IN_TRANSACTION / 1000 - 1 < waited < IDLE_IN_TRANSACTION / 1000 + 5
    store.close()


def _flush(store: BufferedStore) -> BaseException | None:
    try:
        store.flush()
    except BaseException as exc:  # reported by the test
        return exc
    return None


def _wait_for_lock_wait(pg: Backend, query_start: str) -> None:
    """Until a session of the test's database waits on a lock running a query
    that starts with `query_start` (polled: no event tells it)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = pg.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE %s",
            (query_start + "%",),
        )
        if rows[0][0]:
            return
        time.sleep(0.02)
    raise AssertionError(f"no session waits on a lock running {query_start}...")


# --- opening the daemon's store ------------------------------------------------------


async def test_open_async_store_sqlite_by_default(tmp_path: Path) -> None:
    store = await open_async_store(tmp_path / "state", None)
    try:
        assert (tmp_path / "state" / DB_NAME).is_file() and store.inventory() == {}
    finally:
        await store.close()


async def test_open_async_store_postgres_with_a_password_file(pg: Backend, tmp_path: Path) -> None:
    assert pg.server is not None and pg.url is not None
    password = tmp_path / "pw"
    password.write_text(pg.server.password + "\n")
    store = await open_async_store(tmp_path / "state", pg.url, shard="s1", password_file=password)
    try:
        store.set_epoch(None)
        store.transition("File/a", None, S.PENDING, "start")
        await store.flush()
        assert pg.sql("SELECT shard, id FROM reconciler_status") == [("s1", "File/a")]
        assert not (tmp_path / "state").exists()  # no state directory lock with PostgreSQL
    finally:
        await store.close()
    password.write_text("wrong-password-xyz\n")
    with pytest.raises(StoreError) as refused:
        await open_async_store(tmp_path / "state", pg.url, password_file=password)
    assert "wrong-password-xyz" not in str(refused.value)
    assert "password authentication failed" in str(refused.value)
    url_with_password = pg.url.replace("postgres@", "postgres:in-url-pw@")
    with pytest.raises(StoreError) as refused:
        await open_async_store(tmp_path / "state", url_with_password)
    assert "in-url-pw" not in str(refused.value) and "***@" in str(refused.value)
    with pytest.raises(StoreError, match="not a postgresql:// URL"):
        await open_async_store(tmp_path / "state", "mysql://u:secret@h/db")
    password.write_text("")
    with pytest.raises(StoreError, match="is empty"):
        await open_async_store(tmp_path / "state", pg.url, password_file=password)
    # crossing the password file's limit, and a FIFO (which a plain read would wait on)
    password.write_text("x" * (MAX_SECRET_FILE + 1))
    with pytest.raises(StoreError, match=rf"state password file .*: over {MAX_SECRET_FILE} bytes"):
        await open_async_store(tmp_path / "state", pg.url, password_file=password)
    fifo = tmp_path / "pw-fifo"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match=r"state password file .*: not a regular file"):
        await open_async_store(tmp_path / "state", pg.url, password_file=fifo)


def test_psycopg_is_the_driver() -> None:
    assert psycopg.__version__.startswith("3.")
