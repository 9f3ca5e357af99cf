"""The elector: campaigns for the shard's lease while standby, renews it every
third of its duration while leading, and steps down at once when a renewal is
refused, fails, or cannot finish before the lease's deadline (decision 0148).

The daemon learns of a change through two plain callbacks, called after the role
state has changed (so `RoleState.fence` refuses side effects from that moment):
`elected(epoch)` and `deposed(reason)`. They must not block: the daemon starts
its takeover and its step-down as tasks of its own, while the elector goes on
renewing (or campaigning).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import psycopg

from reconciler.ha.lease import Holder, Lease, Term
from reconciler.ha.role import RoleState

__all__ = ["Elector", "margin"]

log = logging.getLogger("reconciler.ha")

_ERRORS = (psycopg.Error, OSError, TimeoutError)
"""What a lost or unreachable database looks like to the lease's connection."""


def margin(seconds: float) -> float:
    """What the leader keeps between its deadline and the lease's expiry: a fifth
    of the lease, at least 0.5 s; it covers the monotonic clock running slower
    than the database's and the time a refused side effect takes to notice."""
    return max(0.5, seconds / 5)


class Elector:
    """Runs the election of one daemon for one shard's lease."""

    def __init__(
        self,
        lease: Lease,
        role: RoleState,
        *,
        elected: Callable[[int], None],
        deposed: Callable[[str], None],
    ) -> None:
        self.lease = lease
        self.role = role
        self._elected = elected
        self._deposed = deposed
        self._term: Term | None = None
        self._resign = asyncio.Event()
        """Set by `resign`: the term ends at once, as if the lease were lost."""
        self._unreachable: str | None = None
        """The database error last logged while standby (said once, not each poll)."""

    @property
    def every(self) -> float:
        """Seconds between renewals: a third of the lease."""
        return self.lease.seconds / 3

    def _deadline(self, term: Term) -> float:
        """When the leader of `term` stops applying: the term's certain end, less
        the margin (monotonic time)."""
        return term.valid_until - margin(self.lease.seconds)

    async def run(self) -> None:
        """Campaign, lead, step down, campaign again, until cancelled."""
        while True:
            term = await self._campaign()
            self._term = term
            self._resign.clear()
            self.role.lead(term.epoch, self._deadline(term))
            log.info(
                "elected leader of shard %s at epoch %d (lease %.0f s)",
                self.lease.shard,
                term.epoch,
                self.lease.seconds,
            )
            self._elected(term.epoch)
            reason = await self._lead(term)
            self._term = None
            self.role.follow(None, "")
            log.warning(
                "stepping down from epoch %d of shard %s: %s", term.epoch, self.lease.shard, reason
            )
            self._deposed(reason)

    async def _campaign(self) -> Term:
        """As standby: try to take the lease when it is free; between tries, follow
        the holder (who it is, where it listens) and sleep until its lease would
        expire, a third of the lease at most."""
        while True:
            wait = self.every
            try:
                async with asyncio.timeout(self.every):
                    term = await self.lease.acquire()
                    if term is not None:
                        self._unreachable = None
                        return term
                    holder = await self.lease.read()
                self._unreachable = None
                self._follow(holder)
                if holder is not None and holder.remaining > 0:
                    wait = min(wait, holder.remaining + 0.05)
                elif holder is not None:
                    wait = 0.05  # expired just now: take it at once
            except asyncio.CancelledError:
                raise
            except _ERRORS as exc:
                text = str(exc) or type(exc).__name__
                if text != self._unreachable:
                    log.warning("standby: cannot reach the lease's database: %s", text)
                self._unreachable = text
                await self.lease.reconnect()
            # a little jitter, so standbys do not all try at the same instant
            await asyncio.sleep(wait + random.uniform(0, 0.05))

    def _follow(self, holder: Holder | None) -> None:
        if holder is not None and holder.held:
            if holder.holder != self.role.leader_id:
                log.info("standby: %s leads at epoch %d", holder.holder, holder.epoch)
            self.role.follow(holder.holder, holder.address)
        else:
            self.role.follow(None, "")

    async def _lead(self, term: Term) -> str:
        """Renew until the lease is lost; why it was."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._deadline(term)
            sent = term.valid_until - self.lease.seconds
            try:
                async with asyncio.timeout(max(0.0, sent + self.every - time.monotonic())):
                    await self._resign.wait()
                return "resigned: the leader's work failed"
            except TimeoutError:
                pass  # time to renew
            if time.monotonic() >= deadline:  # slept through it: paused, or the loop stalled
                return "the lease's deadline passed before it could be renewed"
            try:
                # loop.time() is time.monotonic(): the deadline applies as it is
                async with asyncio.timeout_at(deadline - time.monotonic() + loop.time()):
                    renewed = await self.lease.renew(term)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                await self.lease.reconnect()
                return "the lease could not be renewed before its deadline"
            except _ERRORS as exc:
                await self.lease.reconnect()
                return (
                    f"lost the lease's database session: {str(exc).strip() or type(exc).__name__}"
                )
            if renewed is None:
                return "the lease is no longer ours (taken by another daemon, or expired)"
            term = renewed
            self._term = term
            self.role.valid_until = self._deadline(term)

    def resign(self) -> None:
        """End the term now (the daemon cannot do a leader's work: its store is
        away): the daemon steps down, and campaigns again like any standby."""
        self._resign.set()

    async def release(self) -> None:
        """Give up the lease held now, if any (a clean stop), within a third of
        the lease; then close the connection."""
        term, self._term = self._term, None
        try:
            if term is not None and self.role.leading:
                self.role.follow(None, "")
                try:
                    async with asyncio.timeout(self.every):
                        await self.lease.release(term)
                    log.info(
                        "released the lease of shard %s (epoch %d)", self.lease.shard, term.epoch
                    )
                except _ERRORS as exc:
                    log.warning("could not release the lease: %s; it expires by itself", exc)
        finally:
            await self.lease.close()
