"""The lease and the elector against a real PostgreSQL: takes, renewals and
takeovers by the database's clock, epochs that only grow, a step-down when the
session is killed, and the fence's deadline."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.ha import Elector, Lease, LeaseLost, Role, RoleState
from reconciler.store._pgschema import migrate
from tests.postgres import Server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def database(postgres_server: Server) -> Iterator[str]:
    """A fresh database with the store's schema (the lease table among it); its
    conninfo (password over TCP)."""
    name = "ha_" + uuid.uuid4().hex[:12]
    postgres_server.sql(f"CREATE DATABASE {name}")
    with postgres_server.connect(name) as conn:  # the lease table as the store makes it
        migrate(conn, name)
    yield (
        f"host={postgres_server.host} port={postgres_server.port} dbname={name} "
        f"user=postgres password={postgres_server.password}"
    )
    postgres_server.sql(f"DROP DATABASE {name} WITH (FORCE)")


def lease(conninfo: str, me: str, seconds: float = 2.0, **kw: Any) -> Lease:
    return Lease(conninfo, shard="default", me=me, address=f"http://{me}", seconds=seconds, **kw)


async def test_one_holder_at_a_time_and_epochs_grow(database: str) -> None:
    a, b = lease(database, "a"), lease(database, "b")
    try:
        term = await a.acquire()
        assert term is not None and term.epoch == 1
        assert await b.acquire() is None  # held, not expired
        holder = await b.read()
        assert holder is not None and holder.held
        assert (holder.holder, holder.address, holder.epoch) == ("a", "http://a", 1)
        renewed = await a.renew(term)
        assert renewed is not None and renewed.epoch == 1
        assert renewed.valid_until > term.valid_until
        # a restart under the same id takes its own lease again, at a new epoch
        again = await a.acquire()
        assert again is not None and again.epoch == 2
        assert await a.renew(term) is None  # the older term is gone
        await a.release(again)
        taken = await b.acquire()  # released: free at once
        assert taken is not None and taken.epoch == 3
        assert await a.renew(again) is None
    finally:
        await a.close()
        await b.close()


async def test_an_expired_lease_is_taken_and_not_revived(database: str) -> None:
    a, b = lease(database, "a", seconds=0.5), lease(database, "b", seconds=0.5)
    try:
        term = await a.acquire()
        assert term is not None
        await asyncio.sleep(0.6)
        assert await a.renew(term) is None  # expired by the database's clock
        taken = await b.acquire()
        assert taken is not None and taken.epoch == term.epoch + 1
    finally:
        await a.close()
        await b.close()


def test_fence_refuses_a_standby_and_a_passed_deadline() -> None:
    role = RoleState("me")
    role.fence()  # no election: a sole daemon always leads
    role.lead(4, time.monotonic() + 60)
    role.fence()
    role.valid_until = time.monotonic() - 0.001
    with pytest.raises(LeaseLost, match="epoch 4 was not renewed in time"):
        role.fence()
    role.follow("other", "http://other")
    with pytest.raises(LeaseLost, match="standby"):
        role.fence()


async def test_elector_takeover_and_step_down_on_a_killed_session(
    database: str, postgres_server: Server
) -> None:
    events: list[tuple[str, str, object]] = []
    changed = asyncio.Event()

    def elector(me: str) -> tuple[Elector, RoleState]:
        role = RoleState(me, role=Role.STANDBY)

        def elected(epoch: int) -> None:
            events.append((me, "elected", epoch))
            changed.set()

        def deposed(reason: str) -> None:
            events.append((me, "deposed", reason))
            changed.set()

        conninfo = database + f" application_name={me}"
        return Elector(lease(conninfo, me), role, elected=elected, deposed=deposed), role

    async def next_event() -> tuple[str, str, object]:
        while not events:
            changed.clear()
            await changed.wait()
        return events.pop(0)

    ea, ra = elector("a")
    electors = [ea]
    tasks = [asyncio.create_task(ea.run(), name="elector a")]
    try:
        assert await next_event() == ("a", "elected", 1)
        eb, rb = elector("b")
        electors.append(eb)
        tasks.append(asyncio.create_task(eb.run(), name="elector b"))
        await asyncio.sleep(0.3)
        assert rb.role is Role.STANDBY and rb.leader_id == "a" and rb.leader_url == "http://a"
        assert ra.leading and ra.epoch == 1
        # a's session killed (and a may not log in again): a steps down at its next
        # renewal, b takes over once the lease has expired
        killed = time.monotonic()
        postgres_server.sql("ALTER ROLE postgres CONNECTION LIMIT 1")  # only b's session stays
        postgres_server.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'reconciler lease a%'"
        )
        who, what, reason = await next_event()
        assert (who, what) == ("a", "deposed"), reason
        assert "session" in str(reason) or "not renewed" in str(reason) or "ours" in str(reason)
        assert not ra.leading
        with pytest.raises(LeaseLost):
            ra.fence()
        postgres_server.sql("ALTER ROLE postgres CONNECTION LIMIT -1")
        event = await next_event()
        # a may retake its own lease (same id, not expired) or b takes it: either way
        # the epoch is higher and only one leads
        assert event[1] == "elected" and isinstance(event[2], int) and event[2] >= 2
        assert time.monotonic() - killed < 2.0 + 2.0  # within the lease (2 s) and a poll
        assert [r.leading for r in (ra, rb)].count(True) == 1
    finally:
        postgres_server.sql("ALTER ROLE postgres CONNECTION LIMIT -1")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for each in electors:
            await each.release()
