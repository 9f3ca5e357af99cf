"""The daemon's part in high availability: what it does as leader and as
standby, and the moves between the two (decision 0148).

Without a PostgreSQL store there is no election: `Leadership.start` runs the
leader's loops at once, as a daemon always did. With one, the elector
(reconciler.ha) campaigns for the shard's lease; meanwhile the daemon is a
standby, which applies nothing and re-reads the store's inventory every few
seconds for its read API. Elected, it re-reads the store, writes under its epoch
from then on, and runs the leader's loops from a fresh start (a first pass as
after a start: converged resources are observed, not applied again). Deposed, it
refuses side effects at once (the role's fence), lets the passes in flight end
within the shutdown timeout, cancels the rest, and starts over as a standby.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from reconciler.ha import Elector, Lease, Role, RoleState
from reconciler.server import Leader

if TYPE_CHECKING:
    from reconciler.daemon.lifecycle import Daemon

log = logging.getLogger("reconciler.daemon")

STANDBY_RELOAD = 2.0
"""Seconds between a standby's re-reads of the inventory (its read API's view)."""

ID_VARIABLE, EPOCH_VARIABLE = "RECONCILER_DAEMON_ID", "RECONCILER_EPOCH"
"""What commands run by a leader find in their environment (Command inherits them)."""


def default_id() -> str:
    """host:pid:random, unique among the daemons of a shard."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


Loops = list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]


class Leadership:
    """The role of one daemon, and the tasks that go with it."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        settings = daemon.settings
        self.role = RoleState(settings.daemon_id or default_id())
        self.elector: Elector | None = None
        self._group: asyncio.TaskGroup | None = None
        self._leading: asyncio.Task[None] | None = None
        self._electing: asyncio.Task[None] | None = None
        self._change: asyncio.Task[None] | None = None
        """The last takeover or step-down started: the next one waits for it."""
        self._seen: object = None
        """The store's mark when the inventory was last read as a standby."""

    @property
    def elected(self) -> bool:
        """Whether an election runs (a PostgreSQL store)."""
        return self.elector is not None

    def configure(self, state_url: str | None, password: str | None, shard: str) -> None:
        """An election for `shard` when the store is PostgreSQL; else a sole leader."""
        if not state_url:
            return
        settings = self._daemon.settings
        self.elector = Elector(
            Lease(
                state_url,
                shard=shard,
                me=self.role.daemon_id,
                address=settings.advertise_url or "",
                seconds=settings.lease_duration,
                connect_kwargs={} if password is None else {"password": password},
            ),
            self.role,
            elected=self._elected,
            deposed=self._deposed,
        )
        self.role.follow(None, "")
        os.environ[ID_VARIABLE] = self.role.daemon_id

    def forward(self) -> Leader | None:
        """None while leading (syncs are ours); else where the leader is."""
        if self.role.leading:
            return None
        return Leader(self.role.leader_id, self.role.leader_url)

    def loops(self, group: asyncio.TaskGroup) -> Loops:
        """The loops every role runs (besides the daemon's own); the leader's are
        started now (no election) or when elected."""
        self._group = group
        if self.elector is None:
            self._leading = group.create_task(self._lead(None), name="leader")
            return []
        self._electing = group.create_task(self.elector.run(), name="elector")
        return [("standby view", self._standby_loop)]

    async def stop(self) -> None:
        """At shutdown, after the passes in flight ended: the leader's loops
        cancelled, the lease released (a standby takes over at once)."""
        for task in (self._change, self._leading, self._electing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.elector is not None:
            await self.elector.release()

    # the elector's callbacks: the role has changed already

    def _elected(self, epoch: int) -> None:
        assert self._group is not None
        self._change = self._group.create_task(
            self._take_over(self._change, epoch), name="takeover"
        )

    def _deposed(self, reason: str) -> None:
        assert self._group is not None
        self._change = self._group.create_task(self._step_down(self._change), name="step down")

    async def _take_over(self, previous: asyncio.Task[None] | None, epoch: int) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        if not self.role.leading or self.role.epoch != epoch:
            return  # lost again meanwhile
        assert self._group is not None
        self._leading = self._group.create_task(self._lead(epoch), name="leader")

    async def _lead(self, epoch: int | None) -> None:
        """A term as leader: the store as the database has it, the epoch every
        write carries, then the leader's loops from a start."""
        if self.elector is None or epoch is None:  # a sole daemon: a failure stops it
            self._daemon.request_sync("start")
            await self._loops()
            return
        daemon, store = self._daemon, self._daemon.store
        assert store is not None
        try:
            await store.reload()
            store.set_epoch(epoch)
            os.environ[EPOCH_VARIABLE] = str(epoch)
            daemon.source_state.last_success = await store.last_fetched(daemon.source_state.url)
            log.info("leading at epoch %d: converging as after a start", epoch)
            daemon.request_sync("takeover")
            await self._loops()
        except Exception as exc:  # e.g. the store's database away: let another lead
            log.error("the leader's work failed: %s; stepping down", _first(exc))
            self.role.follow(None, "")  # the fence refuses from now on
            self.elector.resign()

    async def _loops(self) -> None:
        async with asyncio.TaskGroup() as group:
            for name, job in self._daemon.leader_loops():
                group.create_task(job(), name=name)

    async def _step_down(self, previous: asyncio.Task[None] | None) -> None:
        """No new pass; the passes in flight (their side effects refused by the
        fence) end within the shutdown timeout, then the leader's loops are
        cancelled and the daemon starts over as a standby."""
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        daemon, leading = self._daemon, self._leading
        self._leading = None
        os.environ.pop(EPOCH_VARIABLE, None)
        if leading is not None:
            timeout = daemon.settings.shutdown_timeout
            try:
                async with asyncio.timeout(timeout):
                    await daemon.claims.close()
            except TimeoutError:
                log.warning("work still in flight %.0f s after stepping down: cancelled", timeout)
            leading.cancel()
            await asyncio.gather(leading, return_exceptions=True)
        daemon.start_over()
        await self._reload()
        log.info("standby now")

    async def _standby_loop(self) -> None:
        """A standby's view: the inventory re-read every few seconds."""
        while True:
            await asyncio.sleep(STANDBY_RELOAD)
            change = self._change
            if self.role.role is Role.STANDBY and (change is None or change.done()):
                await self._reload(if_changed=True)

    async def _reload(self, *, if_changed: bool = False) -> None:
        """Read the inventory again; `if_changed`: only when the leader wrote since
        the last read (12,000 records take ~0.2 s of the store's thread)."""
        store = self._daemon.store
        if store is None:
            return
        try:
            mark = await store.mark()
            if if_changed and mark is not None and mark == self._seen:
                return
            await store.reload()
            self._seen = mark
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database away: the last view stays
            log.debug("standby: cannot re-read the inventory: %s", exc)

    def status(self) -> dict[str, Any]:
        role = self.role
        return {
            "elected": self.elected,
            "role": role.role.value,
            "daemonId": role.daemon_id,
            "epoch": role.epoch,
            "leader": {"id": role.leader_id, "url": role.leader_url or None},
        }


def _first(exc: BaseException) -> BaseException:
    """The first error of a task group's failure."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
