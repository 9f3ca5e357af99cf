"""The store's run records (`RunRecords`: a guard-less Command's last run) when
several daemons share the database: PostgreSQL keeps them in `reconciler_runs`,
durable when `put` returns, per shard, fenced like the state tables; SQLite has
none (the Command provider keeps its files in the state directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.fsm import State
from reconciler.model import (
    PermanentError,
    PrepareContext,
    ProviderSettings,
    TemporaryError,
)
from reconciler.providers.command import CommandProvider, CommandSpec
from reconciler.store._pgschema import SCHEMA_VERSION as PG_SCHEMA
from reconciler.store.buffered import BufferedStore
from tests.store.backends import Backend
from tests.store.test_conformance import opened

pytestmark = pytest.mark.timeout(60)


def test_only_a_shared_database_keeps_run_records(backend: Backend) -> None:
    with opened(backend) as store:
        assert (store.run_records is None) == (backend.server is None)


def test_put_is_durable_at_once_and_get_many_reads_in_order(pg: Backend) -> None:
    with opened(pg) as writer, opened(pg) as reader:
        runs, other = writer.run_records, reader.run_records
        assert runs is not None and other is not None
        assert other.get_many([]) == []
        runs.put("k1", {"ranAt": 1.5, "exit": 0, "refresh": {"File/a": "t1"}})
        runs.put("k2", {"ranAt": 2.0, "exit": 0, "refresh": {}})
        # another connection sees it without any flush: its own transaction, committed
        assert other.get_many(["k2", "nope", "k1"]) == [
            {"ranAt": 2.0, "exit": 0, "refresh": {}},
            None,
            {"ranAt": 1.5, "exit": 0, "refresh": {"File/a": "t1"}},
        ]
        runs.put("k1", {"ranAt": 3.0, "exit": 0, "refresh": {}})
        runs.drop("k2")
        runs.drop("never-put")
        assert other.get_many(["k1", "k2"]) == [{"ranAt": 3.0, "exit": 0, "refresh": {}}, None]
        # a put commits only itself: the buffered writes wait for their flush
        writer.transition("File/x", None, State.PENDING, "start")
        runs.put("k3", {"exit": 0})
        assert pg.sql("SELECT count(*) FROM reconciler_status") == [(0,)]
    assert pg.sql("SELECT key FROM reconciler_runs ORDER BY key") == [("k1",), ("k3",)]


def test_shards_keep_their_own_records(pg: Backend) -> None:
    with opened(pg, shard="a") as a, opened(pg, shard="b") as b:
        assert a.run_records is not None and b.run_records is not None
        a.run_records.put("k", {"who": "a"})
        assert b.run_records.get_many(["k"]) == [None]
        b.run_records.put("k", {"who": "b"})
        b.run_records.drop("k")
        assert a.run_records.get_many(["k"]) == [{"who": "a"}]
    assert pg.sql("SELECT shard, key FROM reconciler_runs") == [("a", "k")]


def test_a_deposed_leaders_put_is_refused_and_writes_nothing(pg: Backend) -> None:
    with opened(pg) as store:
        runs = store.run_records
        assert runs is not None
        runs.put("kept", {"exit": 0})  # no lease taken yet: no epoch needed
        pg.sql("INSERT INTO reconciler_lease (shard, holder, epoch) VALUES ('default', 'b', 3)")
        store.set_epoch(2)
        with pytest.raises(PermanentError, match=r"database .*fenced: epoch 2, lease is at 3"):
            runs.put("k", {"exit": 0})
        with pytest.raises(PermanentError, match="fenced: epoch 2, lease is at 3"):
            runs.drop("kept")
        store.set_epoch(None)
        with pytest.raises(PermanentError, match="fenced: epoch none, lease is at 3"):
            runs.put("k", {"exit": 0})
        assert pg.sql("SELECT key, epoch FROM reconciler_runs") == [("kept", None)]
        assert runs.get_many(["k", "kept"]) == [None, {"exit": 0}]  # reads are never fenced
        store.set_epoch(3)
        runs.put("k", {"exit": 0})
    assert pg.sql("SELECT key, epoch FROM reconciler_runs ORDER BY key") == [
        ("k", 3),
        ("kept", None),
    ]


def test_a_database_away_is_a_temporary_read_and_a_permanent_write(pg: Backend) -> None:
    store = pg.open()
    runs = store.run_records
    assert runs is not None
    store.close()
    with pytest.raises(TemporaryError, match=r"cannot read the run records: .*closed"):
        runs.get_many(["k"])
    with pytest.raises(PermanentError, match="closed"):
        runs.put("k", {"exit": 0})


def test_every_store_of_a_database_gets_the_same_shared_key(backend: Backend) -> None:
    """The digest key of a shared database (decision 0156): made by the first
    store that asks, the same for every shard and every later store; none on
    SQLite (a state directory keeps its own)."""
    if backend.server is None:
        with opened(backend) as store:
            assert store.shared_key("digest") is None
        return
    with opened(backend, shard="a") as a, opened(backend, shard="b") as b:
        first = a.shared_key("digest")
        assert first is not None and len(first) == 32
        assert b.shared_key("digest") == first
        assert a.shared_key("other") not in (None, first)
    with opened(backend) as later:
        assert later.shared_key("digest") == first


def test_a_schema_1_database_gains_the_runs_table(pg: Backend) -> None:
    pg.open().close()
    pg.sql("DROP TABLE reconciler_keys")
    pg.sql("DROP TABLE reconciler_runs")
    pg.sql("UPDATE reconciler_schema SET version = 1")
    with opened(pg) as store:
        assert store.run_records is not None
        store.run_records.put("k", {"exit": 0})
    assert pg.sql("SELECT version FROM reconciler_schema") == [(PG_SCHEMA,)]
    assert pg.sql("SELECT key FROM reconciler_runs") == [("k",)]


async def test_a_command_on_a_shared_store_runs_once_across_daemons(
    pg: Backend, tmp_path: Path
) -> None:
    """The Command provider with the store's records: a second daemon (another
    state directory, another store) finds the run; a deposed one's run is
    reported as failed, not recorded."""
    log = tmp_path / "log"
    data = {"argv": ["sh", "-c", f"echo ran >> {log}"]}

    def provider(store: BufferedStore, state: str) -> CommandProvider:
        settings = ProviderSettings(
            allow_commands=True, state_dir=str(tmp_path / state), run_records=store.run_records
        )
        return CommandProvider(settings)

    async def converge(command: CommandProvider, spec_data: dict[str, Any]) -> None:
        ctx = PrepareContext(manifest=tmp_path / "m.yaml", config_root=tmp_path)
        spec = command.prepare(CommandSpec.model_validate(spec_data), ctx)
        [observed] = await command.observe_many([spec])
        plan = command.plan(spec, observed)
        if not plan.empty:
            await command.apply(spec, plan)

    with opened(pg) as first, opened(pg) as second:
        await converge(provider(first, "state-1"), data)
        await converge(provider(second, "state-2"), data)
        assert log.read_text() == "ran\n"
        assert not (tmp_path / "state-1" / "command").exists()  # in the database only
        pg.sql("INSERT INTO reconciler_lease (shard, holder, epoch) VALUES ('default', 'b', 5)")
        first.set_epoch(4)
        changed = {"argv": ["sh", "-c", f"echo ran again >> {log}"]}
        with pytest.raises(PermanentError, match=r"ran \(exit 0\) but .* recorded: .*fenced"):
            await converge(provider(first, "state-1"), changed)
        second.set_epoch(5)
        await converge(provider(second, "state-2"), changed)  # its record was refused: runs
    assert log.read_text() == "ran\nran again\nran again\n"
    assert pg.sql("SELECT epoch FROM reconciler_runs ORDER BY epoch NULLS FIRST") == [(None,), (5,)]
