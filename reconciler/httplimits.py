"""Limits that keep the daemon's HTTP server answering when callers misbehave.

An idle TCP connection costs the daemon a file descriptor, and descriptors are
shared with the engine: a pile of connections that never send a request would
otherwise push the process past its descriptor limit, so `/healthz` stops
answering, heals wait for a descriptor to open the file they fix, and asyncio
logs a traceback for every failed `accept`. What holds that off, all set by
`HttpLimits`:

- `ConnectionGuard` sees every connection (it wraps the aiohttp protocol the
  listening socket creates). A connection must deliver a complete request head
  within `header_timeout` of being accepted, or it is closed. At most
  `connection_cap(...)` connections are open at once, below the descriptor limit
  less a reserve for the engine; a connection beyond that closes the least
  recently active idle connection (an idle pile goes first, a connection that
  just sent a request last), and only when every connection is inside a request,
  the oldest of those. When `accept` fails for want of descriptors anyway, the
  guard closes idle connections so the retry asyncio schedules succeeds, and
  `accept_error_handler` logs that as one line without a traceback.
- `TokenBucket` bounds how often a route group (webhooks, the sync API) may be
  called; the server answers 429 with `Retry-After` past it.
- Keep-alive idle and body read timeouts are applied by the server (aiohttp's
  `keepalive_timeout`, a deadline around reading the body).

Nothing here imports aiohttp at run time or anything of ours, so the daemon's
settings can hold an `HttpLimits` without loading the HTTP stack.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["ConnectionGuard", "HttpLimits", "TokenBucket", "accept_error_handler", "connection_cap"]

_log = logging.getLogger("reconciler.server")

FD_RESERVE: Final = 256
"""Descriptors kept free of HTTP connections for the engine, the store, git and watches."""
MIN_CONNECTIONS: Final = 8
"""The cap never goes below this, however low the descriptor limit."""
EVICT_ON_EMFILE: Final = 16
"""Idle connections closed when `accept` runs out of descriptors, so its retry succeeds."""


@dataclass(frozen=True)
class HttpLimits:
    """Timeouts, the connection cap and the rate limits of the HTTP server.

    Durations are seconds; rates are requests per second with a burst of that
    many requests allowed at once.
    """

    max_connections: int = 1024
    header_timeout: float = 10.0
    idle_timeout: float = 15.0
    body_timeout: float = 10.0
    hook_rate: float = 10.0
    hook_burst: int = 50
    sync_rate: float = 1.0
    sync_burst: int = 10

    def __post_init__(self) -> None:
        for name in ("max_connections", "hook_burst", "sync_burst"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("header_timeout", "idle_timeout", "body_timeout", "hook_rate", "sync_rate"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a number > 0, got {value!r}")


def connection_cap(max_connections: int, soft_limit: int | None = None) -> int:
    """How many connections may be open at once: `max_connections`, but never
    so many that the engine is left fewer than FD_RESERVE descriptors (nor, with
    a tiny descriptor limit, fewer than MIN_CONNECTIONS connections)."""
    if soft_limit is None:
        soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft_limit == resource.RLIM_INFINITY:
        return max_connections
    return max(MIN_CONNECTIONS, min(max_connections, soft_limit - FD_RESERVE))


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one token per request."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one is due."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol, seen by the guard.

    Every protocol callback is passed on unchanged; the guard only learns when
    the connection opens and closes.
    """

    __slots__ = ("_guard", "busy", "head_deadline", "inner", "peer", "transport")

    def __init__(self, guard: ConnectionGuard, inner: web.RequestHandler) -> None:
        self._guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.busy = False
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.inner.connection_made(transport)
        self._guard._opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._closed(self)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None  # aiohttp's answer too: close the transport

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            # abort, not close: a caller that stopped reading cannot hold the
            # descriptor (and the unsent response) while a flush waits on it
            self.transport.abort()


class ConnectionGuard:
    """Every connection of one server: the cap, the header timeout, the evictions.

    `protocol` is the factory to give `loop.create_server`; the server's
    middleware calls `request_started` and `request_finished` around each
    request, which is how the guard tells an idle connection from a busy one.
    """

    def __init__(self, server: web.Server, *, cap: int, header_timeout: float) -> None:
        self._server = server
        self.cap = cap
        self.header_timeout = header_timeout
        # least recently active first: accepted, or last began or ended a request
        self._open: collections.OrderedDict[_Connection, None] = collections.OrderedDict()
        self._by_handler: dict[object, _Connection] = {}
        self.evicted = 0
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self._open)

    def protocol(self) -> asyncio.Protocol:
        inner = self._server()
        connection = _Connection(self, inner)
        self._by_handler[inner] = connection
        return connection

    def request_started(self, handler: object) -> None:
        connection = self._by_handler.get(handler)
        if connection is None or connection not in self._open:
            return
        if connection.head_deadline is not None:
            connection.head_deadline.cancel()
            connection.head_deadline = None
        connection.busy = True
        self._open.move_to_end(connection)

    def request_finished(self, handler: object) -> None:
        connection = self._by_handler.get(handler)
        if connection is None or connection not in self._open:
            return
        connection.busy = False
        self._open.move_to_end(connection)

    def shed(self, count: int) -> int:
        """Close up to `count` idle connections, least recently active first."""
        victims = [c for c in self._open if not c.busy][:count]
        for victim in victims:
            self._close(victim)
        self.evicted += len(victims)
        return len(victims)

    def _opened(self, connection: _Connection) -> None:
        self._open[connection] = None
        loop = asyncio.get_running_loop()
        connection.head_deadline = loop.call_later(
            self.header_timeout, self._head_timed_out, connection
        )
        if len(self._open) > self.cap:
            self._evict_one(connection)

    def _closed(self, connection: _Connection) -> None:
        self._forget(connection)
        self._by_handler.pop(connection.inner, None)

    def _close(self, connection: _Connection) -> None:
        # Forgotten at once, not when asyncio reports the connection lost (a
        # loop iteration later): the next connection accepted in the same
        # batch must pick another victim and see the true count.
        self._forget(connection)
        connection.close()

    def _forget(self, connection: _Connection) -> None:
        if connection.head_deadline is not None:
            connection.head_deadline.cancel()
            connection.head_deadline = None
        self._open.pop(connection, None)

    def _evict_one(self, newcomer: _Connection) -> None:
        victim = next((c for c in self._open if not c.busy and c is not newcomer), None)
        if victim is None:
            victim = next(iter(self._open))
        self.evicted += 1
        _log.warning(
            "HTTP connection from %s closed: %d connections open, at most %d; "
            "it was the least recently active",
            victim.peer,
            len(self._open),
            self.cap,
        )
        self._close(victim)

    def _head_timed_out(self, connection: _Connection) -> None:
        connection.head_deadline = None
        if connection not in self._open:
            return
        self.timed_out += 1
        _log.info(
            "HTTP connection from %s closed: no complete request head within %gs",
            connection.peer,
            self.header_timeout,
        )
        self._close(connection)


def accept_error_handler(
    guard: ConnectionGuard, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]:
    """A loop exception handler for asyncio's failed `accept` (out of descriptors):
    one line without a traceback, and idle connections closed so that the retry
    asyncio schedules a second later can succeed. Anything else goes to `previous`."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> object:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        # asyncio's wording for EMFILE, ENFILE, ENOBUFS and ENOMEM in accept; the
        # daemon has one listening socket, so it is this server's
        if not isinstance(exc, OSError) or not message.startswith("socket.accept() out of"):
            return previous(loop, context)
        closed = guard.shed(EVICT_ON_EMFILE)
        _log.warning(
            "HTTP server cannot accept connections: %s; %d connections open, "
            "closed %d idle ones; retrying in 1s",
            exc.strerror or exc,
            len(guard),
            closed,
        )
        return None

    return handle
