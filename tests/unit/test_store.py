"""The SQLite state store on a real database in a tmp state directory."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.fsm import State
from reconciler.store import AsyncStore, OffLoopStore, Record, SqliteStore, StoreError, StoreLocked
from reconciler.store.sqlite import DB_NAME, SCHEMA_VERSION

S = State


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def store(state_dir: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(state_dir)
    yield opened
    opened.close()


def _query(state_dir: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Read through a connection of our own, read-only, as another process would."""
    db = sqlite3.connect(f"file:{state_dir / DB_NAME}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _inventory(state_dir: Path) -> dict[str, Record]:
    reader = SqliteStore(state_dir, readonly=True)
    try:
        return reader.inventory()
    finally:
        reader.close()


# --- opening --------------------------------------------------------------------


def test_fresh_database_is_migrated_in_wal_mode(store: SqliteStore, state_dir: Path) -> None:
    assert (state_dir / DB_NAME).is_file()
    assert _query(state_dir, "PRAGMA journal_mode") == [("wal",)]
    assert _query(state_dir, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {
        r[0] for r in _query(state_dir, "SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    assert {"resources", "status", "events", "revisions"} <= tables
    assert store.inventory() == {}
    assert store.history() == []
    assert store.last_revision() is None


def test_reopen_does_not_migrate_again(state_dir: Path) -> None:
    SqliteStore(state_dir).close()
    store = SqliteStore(state_dir)
    store.close()
    assert _query(state_dir, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def _newer_db(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    db = sqlite3.connect(state_dir / DB_NAME)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()


def test_newer_schema_is_refused(state_dir: Path) -> None:
    _newer_db(state_dir)
    with pytest.raises(StoreError) as info:
        SqliteStore(state_dir)
    message = str(info.value)
    assert not isinstance(info.value, StoreLocked)
    assert str(state_dir / DB_NAME) in message
    assert f"schema {SCHEMA_VERSION + 1}" in message
    assert "newer" in message and "upgrade reconciler" in message


def test_newer_schema_refusal_releases_the_lock(state_dir: Path) -> None:
    _newer_db(state_dir)
    with pytest.raises(StoreError):
        SqliteStore(state_dir)
    # the refusal must not leave the state directory locked by this process
    with pytest.raises(StoreError) as info:
        SqliteStore(state_dir)
    assert not isinstance(info.value, StoreLocked), str(info.value)


def test_readonly_refuses_other_schema(state_dir: Path) -> None:
    _newer_db(state_dir)
    with pytest.raises(StoreError, match=f"schema {SCHEMA_VERSION + 1}"):
        SqliteStore(state_dir, readonly=True)


def test_second_open_is_locked_and_names_the_pid(store: SqliteStore, state_dir: Path) -> None:
    with pytest.raises(StoreLocked) as info:
        SqliteStore(state_dir)
    assert f"pid {os.getpid()}" in str(info.value)
    assert str(state_dir) in str(info.value)


def test_lock_is_released_on_close(state_dir: Path) -> None:
    SqliteStore(state_dir).close()
    SqliteStore(state_dir).close()


def test_readonly_open_of_missing_database(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "nowhere", readonly=True)
    assert store.inventory() == {}
    assert store.history() == []
    assert store.last_revision() is None
    store.close()
    assert not (tmp_path / "nowhere").exists()


def test_readonly_open_while_a_writer_holds_the_lock(store: SqliteStore, state_dir: Path) -> None:
    store.transition("File/a", None, S.PENDING, "new")
    store.flush()
    reader = SqliteStore(state_dir, readonly=True)
    try:
        assert set(reader.inventory()) == {"File/a"}
    finally:
        reader.close()


# --- round trips ----------------------------------------------------------------


def test_round_trip_through_close_and_reopen(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    store.transition("File/a", None, S.PENDING, "new")
    store.transition("File/a", S.PENDING, S.DETECTING, "start")
    store.intend("File/a", '{"path": "/a"}', '{"prune": true}', ("Directory/d",), True)
    store.transition("File/a", S.DETECTING, S.FAILED, "error", None, "disk full")
    store.schedule_retry("File/a", 3, 1234.5)
    store.transition("Directory/d", None, S.PENDING, "new")
    store.converged("Directory/d", "hash-d", '{"path": "/d"}', "{}", (), False)
    store.transition("Directory/d", S.PENDING, S.IN_SYNC, "plan-empty", "nothing to do")
    store.set_revision("rev-1")
    store.set_revision("rev-2")
    store.close()

    store = SqliteStore(state_dir)
    try:
        inventory = store.inventory()
        assert set(inventory) == {"File/a", "Directory/d"}
        a = inventory["File/a"]
        assert (a.kind, a.name) == ("File", "a")
        assert a.state is S.FAILED
        assert a.spec == '{"path": "/a"}'
        assert a.policy == '{"prune": true}'
        assert a.deps == ("Directory/d",)
        assert a.created is True
        assert a.spec_hash is None
        assert a.last_error == "disk full"
        assert (a.attempts, a.next_attempt) == (3, 1234.5)
        d = inventory["Directory/d"]
        assert d.state is S.IN_SYNC
        assert d.spec_hash == "hash-d"
        assert d.created is False
        assert d.deps == ()
        assert d.last_error is None
        assert (d.attempts, d.next_attempt) == (0, None)
        assert store.last_revision() == "rev-2"
        history = store.history("File/a")
        assert [(t.from_state, t.to_state, t.event) for t in history] == [
            (None, S.PENDING, "new"),
            (S.PENDING, S.DETECTING, "start"),
            (S.DETECTING, S.FAILED, "error"),
        ]
        assert all(t.kind == "File" and t.id == "File/a" for t in history)
        assert store.history("Directory/d")[-1].reason == "nothing to do"
    finally:
        store.close()


def test_converged_resets_retry_state(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    store.transition("File/a", None, S.FAILED, "error", None, "boom")
    store.schedule_retry("File/a", 4, 99.0)
    store.close()
    store = SqliteStore(state_dir)
    store.converged("File/a", "h", "{}", "{}", (), True)
    store.transition("File/a", S.FAILED, S.IN_SYNC, "verified")
    store.close()
    record = _inventory(state_dir)["File/a"]
    assert (record.attempts, record.next_attempt, record.last_error) == (0, None, None)
    assert record.spec_hash == "h"


def test_created_unknown_round_trips_as_none(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    store.transition("File/a", None, S.PENDING, "new")
    store.close()
    assert _inventory(state_dir)["File/a"].created is None


def test_forget_survives_reopen(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    for rid in ("File/a", "File/b"):
        store.transition(rid, None, S.PENDING, "new")
        store.converged(rid, "h", "{}", "{}", (), True)
    store.close()
    store = SqliteStore(state_dir)
    store.transition("File/a", S.PENDING, S.PRUNING, "remove")
    store.transition("File/a", S.PRUNING, S.GONE, "pruned")
    store.forget("File/a")
    assert set(store.inventory()) == {"File/b"}
    store.close()
    store = SqliteStore(state_dir)
    try:
        assert set(store.inventory()) == {"File/b"}
        assert _query(state_dir, "SELECT count(*) FROM resources WHERE id = 'File/a'") == [(0,)]
        assert _query(state_dir, "SELECT count(*) FROM status WHERE id = 'File/a'") == [(0,)]
        # the history of a forgotten resource is kept
        assert [t.to_state for t in store.history("File/a")][-1] is S.GONE
    finally:
        store.close()


def test_forget_then_readd_in_one_buffer(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    store.transition("File/a", None, S.IN_SYNC, "verified")
    store.converged("File/a", "old", "{}", "{}", (), True)
    store.flush()
    store.forget("File/a")
    store.transition("File/a", None, S.PENDING, "new")
    store.close()
    inventory = _inventory(state_dir)
    assert inventory["File/a"].state is S.PENDING


def test_unflushed_writes_are_not_visible_to_others(store: SqliteStore, state_dir: Path) -> None:
    store.transition("File/a", None, S.PENDING, "new")
    assert set(store.inventory()) == {"File/a"}
    assert _query(state_dir, "SELECT id FROM resources") == []
    store.flush()
    assert _query(state_dir, "SELECT id FROM resources") == [("File/a",)]


def test_intend_is_durable_once_flushed(store: SqliteStore, state_dir: Path) -> None:
    # intend() is buffered (Store.intend: "the caller flushes before the side
    # effect"); the engine's group commit is that flush. The end-to-end property,
    # intent on disk while the provider creates, is tested in test_engine.
    store.transition("File/a", None, S.PENDING, "new")
    store.transition("File/a", S.PENDING, S.APPLYING, "plan-changed")
    store.intend("File/a", '{"path": "/a"}', "{}", ("Directory/d",), True)
    store.flush()
    # no close: another reader must already see the intent
    reader = SqliteStore(state_dir, readonly=True)
    try:
        record = reader.inventory()["File/a"]
        assert record.created is True
        assert record.spec == '{"path": "/a"}'
        assert record.deps == ("Directory/d",)
        assert record.state is S.APPLYING
        assert record.spec_hash is None
    finally:
        reader.close()
    assert _query(state_dir, "SELECT created FROM resources WHERE id = 'File/a'") == [(1,)]


def test_intend_keeps_converged_hash(store: SqliteStore, state_dir: Path) -> None:
    store.transition("File/a", None, S.IN_SYNC, "verified")
    store.converged("File/a", "h1", '{"v": 1}', "{}", (), True)
    store.flush()
    store.intend("File/a", '{"v": 2}', "{}", (), True)
    store.flush()
    record = _inventory(state_dir)["File/a"]
    assert (record.spec_hash, record.spec) == ("h1", '{"v": 2}')


# --- history --------------------------------------------------------------------


def test_history_is_bounded_by_history_limit(state_dir: Path) -> None:
    store = SqliteStore(state_dir, history_limit=5)
    try:
        for i in range(8):
            store.transition("File/a", None, S.PENDING, f"e{i}")
        store.flush()
        for i in range(8, 12):
            store.transition("File/a", None, S.PENDING, f"e{i}")
        store.flush()
        assert [t.event for t in store.history()] == ["e7", "e8", "e9", "e10", "e11"]
        assert _query(state_dir, "SELECT count(*) FROM events") == [(5,)]
    finally:
        store.close()


def test_history_filter_and_limit(store: SqliteStore) -> None:
    for i in range(4):
        store.transition("File/a", None, S.PENDING, f"a{i}")
        store.transition("Directory/b", None, S.PENDING, f"b{i}")
    assert [t.event for t in store.history("File/a")] == ["a0", "a1", "a2", "a3"]
    assert [t.event for t in store.history("Directory/b", limit=2)] == ["b2", "b3"]
    assert [t.event for t in store.history(limit=3)] == ["b2", "a3", "b3"]
    assert store.history("Nope/x") == []
    everything = store.history()
    assert [t.seq for t in everything] == sorted(t.seq for t in everything)
    assert {t.kind for t in everything} == {"File", "Directory"}


def test_history_reads_through_a_readonly_store(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    store.transition("File/a", None, S.PENDING, "new", "because")
    store.close()
    reader = SqliteStore(state_dir, readonly=True)
    try:
        (t,) = reader.history("File/a")
        assert (t.from_state, t.to_state, t.event, t.reason) == (None, S.PENDING, "new", "because")
    finally:
        reader.close()


# --- what the daemon needs after a restart ---------------------------------------


def test_last_fetch_survives_a_reopen_per_source(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    assert store.last_fetched("git://a/repo.git") is None
    store.set_fetched("git://a/repo.git", 1000.5)
    assert store.last_fetched("git://a/repo.git") == 1000.5  # buffered, already visible
    assert _query(state_dir, "SELECT * FROM sources") == []  # not yet flushed
    store.flush()
    store.set_fetched("git://a/repo.git", 1060.25)  # a later fetch replaces it
    store.set_fetched("/srv/config", 7.0)
    store.close()

    store = SqliteStore(state_dir)
    try:
        assert store.last_fetched("git://a/repo.git") == 1060.25
        assert store.last_fetched("/srv/config") == 7.0
        assert store.last_fetched("git://other/repo.git") is None
    finally:
        store.close()


def test_a_schema_1_database_is_migrated_and_keeps_its_rows(state_dir: Path) -> None:
    """A state directory written before the sources table existed: opening it adds
    the table and keeps the inventory and the last revision."""
    from reconciler.store.sqlite import MIGRATIONS

    state_dir.mkdir(parents=True)
    db = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    db.executescript(MIGRATIONS[0] + ";PRAGMA user_version=1;")
    db.execute("INSERT INTO resources VALUES ('File/a', 'File', 'a', 'h', '{}', '{}', '[]', 1)")
    db.execute("INSERT INTO status VALUES ('File/a', 'InSync', 5.0, NULL, 0, NULL)")
    db.execute("INSERT INTO revisions (revision, applied_at) VALUES ('sha-good', 5.0)")
    db.close()
    with pytest.raises(StoreError, match="schema 1"):  # a reader does not migrate
        SqliteStore(state_dir, readonly=True)

    store = SqliteStore(state_dir)
    try:
        assert _query(state_dir, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION >= 2
        assert store.inventory()["File/a"].state is S.IN_SYNC
        assert store.last_revision() == "sha-good"
        assert store.last_fetched("git://a/repo.git") is None
        store.set_fetched("git://a/repo.git", 3.0)
    finally:
        store.close()
    reader = SqliteStore(state_dir, readonly=True)
    try:
        assert reader.last_fetched("git://a/repo.git") == 3.0
    finally:
        reader.close()


# --- bundle instances (schema 3) ------------------------------------------------


def test_instance_round_trips_on_rows_and_events(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    store.transition("File/a", None, S.PENDING, "new", instance="Bundle/team-a-web")
    store.intend("File/a", "{}", "{}", (), True, instance="Bundle/team-a-web")
    store.transition("File/flat", None, S.PENDING, "new", instance="")
    store.converged("File/flat", "h", "{}", "{}", (), True)
    store.close()
    assert _inventory(state_dir)["File/a"].instance == "Bundle/team-a-web"
    assert _inventory(state_dir)["File/flat"].instance == ""
    assert _query(state_dir, "SELECT id, instance FROM resources ORDER BY id") == [
        ("File/a", "Bundle/team-a-web"),
        ("File/flat", ""),
    ]
    reader = SqliteStore(state_dir, readonly=True)
    try:
        assert [t.instance for t in reader.history("File/a")] == ["Bundle/team-a-web"]
        assert reader.history("File/a")[0].to_json()["instance"] == "Bundle/team-a-web"
        assert [t.id for t in reader.history(instance="Bundle/team-a-web")] == ["File/a"]
        assert [t.id for t in reader.history(instance="")] == ["File/flat"]
    finally:
        reader.close()


def test_a_transition_without_instance_keeps_the_recorded_one(state_dir: Path) -> None:
    """A prune knows no desired resource: its events carry the instance recorded
    with the last spec, and still do once the row is forgotten."""
    store = SqliteStore(state_dir)
    store.converged("File/a", "h", "{}", "{}", (), True, instance="Bundle/x")
    store.transition("File/a", S.IN_SYNC, S.PRUNING, "remove")
    store.flush()
    store.transition("File/a", S.PRUNING, S.PRUNING, "pruned")
    store.forget("File/a")
    store.close()
    assert _inventory(state_dir) == {}
    reader = SqliteStore(state_dir, readonly=True)
    try:
        assert [(t.event, t.instance) for t in reader.history("File/a")] == [
            ("remove", "Bundle/x"),
            ("pruned", "Bundle/x"),
        ]
    finally:
        reader.close()


def test_a_transition_with_a_new_instance_moves_the_row(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    store.converged("File/a", "h", "{}", "{}", (), True, instance="Bundle/old")
    store.flush()
    store.transition("File/a", S.IN_SYNC, S.DETECTING, "spec-changed", instance="Bundle/new")
    store.close()
    assert _inventory(state_dir)["File/a"].instance == "Bundle/new"


def test_a_schema_2_database_is_migrated_and_keeps_its_rows(state_dir: Path) -> None:
    """A state directory written before instances existed (schema 2, as the
    previous release left it): opening it adds the columns, every row and event
    stays and reads as flat (instance ''), and new rows carry their instance."""
    from reconciler.store.sqlite import MIGRATIONS

    state_dir.mkdir(parents=True)
    db = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    db.executescript(MIGRATIONS[0] + ";" + MIGRATIONS[1] + ";PRAGMA user_version=2;")
    db.execute("INSERT INTO resources VALUES ('File/a', 'File', 'a', 'h', '{}', '{}', '[]', 1)")
    db.execute("INSERT INTO status VALUES ('File/a', 'InSync', 5.0, NULL, 0, NULL)")
    db.execute(
        "INSERT INTO events (ts, id, from_state, to_state, event, reason) "
        "VALUES (4.0, 'File/a', NULL, 'Pending', 'new', NULL)"
    )
    db.execute("INSERT INTO sources VALUES ('git://a/repo.git', 3.0)")
    db.close()
    with pytest.raises(StoreError, match="schema 2"):  # a reader does not migrate
        SqliteStore(state_dir, readonly=True)

    store = SqliteStore(state_dir)
    try:
        assert _query(state_dir, "PRAGMA user_version") == [(3,)]
        a = store.inventory()["File/a"]
        assert (a.state, a.spec_hash, a.created, a.instance) == (S.IN_SYNC, "h", True, "")
        assert [(t.event, t.instance) for t in store.history("File/a")] == [("new", "")]
        assert store.last_fetched("git://a/repo.git") == 3.0
        store.converged("File/b", "h", "{}", "{}", (), True, instance="Bundle/x")
        store.transition("File/b", None, S.IN_SYNC, "new")
    finally:
        store.close()
    b = _inventory(state_dir)["File/b"]
    assert b.instance == "Bundle/x"


# --- threads: flushes beside the writer (decision 0119) ------------------------------


def test_flushes_on_another_thread_while_writes_go_on_lose_nothing(state_dir: Path) -> None:
    """The daemon writes on its loop while a flush runs on the store's thread:
    whatever interleaving, the database ends equal to the records in memory."""
    store = SqliteStore(state_dir)
    stop = threading.Event()
    flushes = 0

    def flusher() -> None:
        nonlocal flushes
        while not stop.is_set():
            store.flush()
            flushes += 1

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for i in range(3000):
            rid = f"File/f{i % 300}"
            store.transition(rid, None, S.DETECTING, "start", instance=f"Bundle/b{i % 3}")
            store.converged(rid, f"h{i}", f'{{"i": {i}}}', "{}", ("Directory/d",), True)
            store.schedule_retry(rid, i % 4, None)
            if i % 7 == 0:
                store.forget(f"File/f{(i + 150) % 300}")
            if i % 500 == 0:
                store.set_revision(f"rev{i}")
    finally:
        stop.set()
        thread.join()
    expected = store.inventory()
    store.close()
    assert flushes > 1
    assert _inventory(state_dir) == expected
    assert _query(state_dir, "SELECT count(*) FROM events") == [(3000,)]
    assert _query(state_dir, "SELECT revision FROM revisions ORDER BY seq") == [
        (f"rev{i}",) for i in range(0, 3000, 500)
    ]


def test_a_flush_that_fails_keeps_its_writes_for_the_next(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    other = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    try:
        store.converged("File/a", "h", "{}", "{}", (), True)
        store.transition("File/a", None, S.IN_SYNC, "new")
        store.set_fetched("git://a/repo.git", 7.0)
        store.flush()
        store.forget("File/a")
        store.transition("File/b", None, S.PENDING, "new")
        store.set_revision("r1")
        assert store._db is not None
        store._db.execute("PRAGMA busy_timeout = 0")  # fail at once, not after 5 s
        other.execute("BEGIN IMMEDIATE")  # another writer holds the database
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.flush()
        other.execute("ROLLBACK")
        store.transition("File/b", S.PENDING, S.DETECTING, "start")
        store.flush()
    finally:
        other.close()
        store.close()
    assert set(_inventory(state_dir)) == {"File/b"}
    assert _query(state_dir, "SELECT id, event FROM events ORDER BY seq") == [
        ("File/a", "new"),
        ("File/b", "new"),
        ("File/b", "start"),
    ]
    assert _query(state_dir, "SELECT revision FROM revisions") == [("r1",)]


def test_last_revision_and_fetch_are_read_once_then_kept(state_dir: Path) -> None:
    store = SqliteStore(state_dir)
    store.set_revision("r1")
    store.set_fetched("git://a/repo.git", 3.0)
    store.close()
    store = SqliteStore(state_dir)
    try:
        assert store.last_revision() == "r1"
        assert store.last_fetched("git://a/repo.git") == 3.0
        assert store.last_fetched("git://b/repo.git") is None
        store.set_revision("r2")
        store.set_fetched("git://b/repo.git", 4.0)
        assert store.last_revision() == "r2"  # before any flush
        assert store.last_fetched("git://b/repo.git") == 4.0
    finally:
        store.close()


def _conforms(store: OffLoopStore) -> AsyncStore:
    return store  # checked by mypy: OffLoopStore implements the protocol


async def test_the_off_loop_store_never_runs_sql_on_the_loop(state_dir: Path) -> None:
    """Every statement the daemon's store runs, from opening to closing, runs on
    the store's own thread; the loop only writes the buffers and reads memory."""
    seed = SqliteStore(state_dir)
    seed.converged("File/old", "h0", "{}", "{}", (), True)
    seed.transition("File/old", None, S.IN_SYNC, "new")
    seed.set_revision("r0")
    seed.set_fetched("git://a/repo.git", 2.0)
    seed.close()

    store = await OffLoopStore.opening(state_dir)
    threads: set[str] = set()
    assert store.sync._db is not None
    store.sync._db.set_trace_callback(lambda sql: threads.add(threading.current_thread().name))
    try:
        assert set(store.inventory()) == {"File/old"}
        assert await store.last_revision() == "r0"
        assert await store.last_fetched("git://a/repo.git") == 2.0
        store.transition("File/a", None, S.PENDING, "new", instance="Bundle/x")
        store.intend("File/a", "{}", "{}", (), True, instance="Bundle/x")
        store.transition("File/a", S.PENDING, S.APPLYING, "applied")
        store.converged("File/a", "h1", "{}", "{}", (), True, instance="Bundle/x")
        store.schedule_retry("File/a", 0, None)
        store.forget("File/old")
        store.set_revision("r1")
        store.set_fetched("git://a/repo.git", 3.0)
        assert (await store.last_events(["File/a"], "applied")).keys() == {"File/a"}
        assert [t.event for t in await store.history("File/a")] == ["new", "applied"]
        assert [t.id for t in await store.history(instance="Bundle/x")] == ["File/a"] * 2
        await store.flush()
        assert set(store.inventory()) == {"File/a"}
        assert await store.last_revision() == "r1"
    finally:
        await store.close()
    assert threads and all(name.startswith("store") for name in threads), threads
    assert set(_inventory(state_dir)) == {"File/a"}


async def test_opening_a_locked_state_directory_fails_on_the_loop(state_dir: Path) -> None:
    holder = SqliteStore(state_dir)
    try:
        with pytest.raises(StoreLocked):
            await OffLoopStore.opening(state_dir)
    finally:
        holder.close()
