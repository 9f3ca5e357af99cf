"""The lease of one shard: a row of `reconciler_lease` (made by the PostgreSQL
store's first migration) taken, renewed, released and read through a connection
of its own.

Every statement is one autocommitted UPDATE or INSERT whose condition the
database judges with its own clock (`now()`): who holds the lease, and until
when, never depends on the daemons' clocks. Each takeover increments `epoch`;
the store's fence trigger refuses writes of an older epoch (decision 0148).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import psycopg

__all__ = ["Holder", "Lease", "Term"]

_ACQUIRE: Final = """
INSERT INTO reconciler_lease AS l (shard, holder, address, epoch, expires_at, renewed_at)
VALUES (%(shard)s, %(me)s, %(address)s, 1,
        now() + %(seconds)s * interval '1 second', now())
ON CONFLICT (shard) DO UPDATE
   SET holder = excluded.holder, address = excluded.address, epoch = l.epoch + 1,
       expires_at = excluded.expires_at, renewed_at = excluded.renewed_at
 WHERE l.expires_at < now() OR l.holder = excluded.holder
RETURNING l.epoch
"""
"""Take the row when its lease has expired (database time) or is already ours
(a restart under the same --daemon-id); a first daemon makes it, at epoch 1."""

_RENEW: Final = """
UPDATE reconciler_lease
   SET expires_at = now() + %(seconds)s * interval '1 second', renewed_at = now()
 WHERE shard = %(shard)s AND holder = %(me)s AND epoch = %(epoch)s AND expires_at >= now()
RETURNING epoch
"""
"""Only the term we hold, and only while it has not expired: an expired lease is
not revived even when nobody took it (we stopped applying at its deadline)."""

_RELEASE: Final = """
UPDATE reconciler_lease SET expires_at = 'epoch'
 WHERE shard = %(shard)s AND holder = %(me)s AND epoch = %(epoch)s
"""

_READ: Final = """
SELECT holder, address, epoch, extract(epoch FROM expires_at - now())::float8
  FROM reconciler_lease WHERE shard = %(shard)s
"""


@dataclass(frozen=True, slots=True)
class Term:
    """A lease we hold: its epoch, and the monotonic time (`time.monotonic`) before
    which it certainly still holds (taken at the moment the statement was sent,
    so the database's expiry is later still)."""

    epoch: int
    valid_until: float


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds the lease, as the database says."""

    holder: str | None
    address: str
    epoch: int
    remaining: float
    """Seconds of the lease left, by the database's clock (<= 0: expired)."""

    @property
    def held(self) -> bool:
        return self.holder is not None and self.remaining > 0


class Lease:
    """The lease of `shard` for daemon `me`, over one autocommit connection.

    A broken connection raises (psycopg.Error or OSError) from whichever call
    meets it; the caller decides what that means (the elector steps down) and
    calls `reconnect`.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        shard: str,
        me: str,
        address: str,
        seconds: float,
        connect_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._kwargs = dict(connect_kwargs or {})
        self.shard = shard
        self.me = me
        self.address = address
        self.seconds = seconds
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            timeout = max(1, int(self.seconds / 3))
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=timeout,
                application_name=f"reconciler lease {self.me}"[:63],
                # a dead peer is noticed by the kernel too, not only by our timeouts
                keepalives=1,
                keepalives_idle=max(1, int(self.seconds / 3)),
                keepalives_interval=1,
                keepalives_count=3,
                **self._kwargs,
            )
        return self._conn

    def _params(self, **more: Any) -> dict[str, Any]:
        return {"shard": self.shard, "me": self.me, "seconds": self.seconds, **more}

    async def acquire(self) -> Term | None:
        """Take the lease if it is free (expired, or ours already): the new term,
        at the next epoch; None when another daemon holds it."""
        conn = await self._connection()
        sent = time.monotonic()
        cur = await conn.execute(_ACQUIRE, self._params(address=self.address))
        row = await cur.fetchone()
        return None if row is None else Term(int(row[0]), sent + self.seconds)

    async def renew(self, term: Term) -> Term | None:
        """Extend the term we hold; None when it is no longer ours (taken, or
        expired by the database's clock)."""
        conn = await self._connection()
        sent = time.monotonic()
        cur = await conn.execute(_RENEW, self._params(epoch=term.epoch))
        row = await cur.fetchone()
        return None if row is None else Term(term.epoch, sent + self.seconds)

    async def release(self, term: Term) -> None:
        """Give the term up (a clean stop): a standby takes over without waiting
        for the lease to expire."""
        conn = await self._connection()
        await conn.execute(_RELEASE, self._params(epoch=term.epoch))

    async def read(self) -> Holder | None:
        """Who holds the lease; None when no daemon ever took it."""
        conn = await self._connection()
        cur = await conn.execute(_READ, self._params())
        row = await cur.fetchone()
        if row is None:
            return None
        return Holder(row[0], row[1] or "", int(row[2]), float(row[3]))

    async def reconnect(self) -> None:
        """Drop the connection; the next call opens a new one."""
        await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except (psycopg.Error, OSError):
                pass
