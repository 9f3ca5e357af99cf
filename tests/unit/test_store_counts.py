"""The store's count of records per state (what the daemon's status shows) agrees
with its inventory through writes, prunes and a reopen, on a real database."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from reconciler.fsm import State
from reconciler.store import OffLoopStore, SqliteStore

pytestmark = pytest.mark.timeout(30)


def _counted(store: SqliteStore) -> dict[State, int]:
    return dict(Counter(record.state for record in store.inventory().values()))


def test_state_counts_follow_transitions_prunes_and_a_reopen(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state")
    try:
        assert store.state_counts() == {}
        for i in range(5):
            store.transition(f"File/f{i}", None, State.PENDING, "new")
        store.intend("File/f5", "{}", "{}", (), None)  # a row without a transition yet
        assert store.state_counts() == {State.PENDING: 6} == _counted(store)
        for i in range(3):
            store.transition(f"File/f{i}", State.PENDING, State.DETECTING, "start")
        store.transition("File/f0", State.DETECTING, State.DETECTING, "again")
        store.forget("File/f4")
        assert store.state_counts() == {State.PENDING: 2, State.DETECTING: 3}
        assert store.state_counts() == _counted(store)
        store.flush()
    finally:
        store.close()
    reopened = SqliteStore(tmp_path / "state")
    try:  # read from the database, then changed before and after the records are built
        assert reopened.state_counts() == {State.PENDING: 2, State.DETECTING: 3}
        reopened.transition("File/f1", State.DETECTING, State.IN_SYNC, "ok")
        reopened.forget("File/f0")  # loaded, never written in this process
        reopened.forget("File/f1")  # written in this process
        reopened.forget("File/nope")
        assert reopened.state_counts() == {State.PENDING: 2, State.DETECTING: 1}
        assert reopened.state_counts() == _counted(reopened)
    finally:
        reopened.close()


async def test_the_async_store_counts_in_memory(tmp_path: Path) -> None:
    store = await OffLoopStore.opening(tmp_path / "state")
    try:
        store.transition("File/a", None, State.IN_SYNC, "new")
        assert store.state_counts() == {State.IN_SYNC: 1}
    finally:
        await store.close()
