"""The server's wiring: the routes, the middleware (rate limits and the
connection guard's bookkeeping first, then JSON errors), and `start`, which
binds its own listener so the connection guard sees every connection, and
returns a `Server` with a bounded `stop`.

Nothing here is global: `build_app` wires one `Backend` and one
`ServerSettings` into an aiohttp application.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from reconciler.httplimits import (
    ConnectionGuard,
    HttpLimits,
    TokenBucket,
    accept_error_handler,
    connection_cap,
)
from reconciler.pacing import Pacer
from reconciler.server.api import ReadHandlers
from reconciler.server.contract import Backend, ServerSettings, error, log
from reconciler.server.hooks import WriteHandlers
from reconciler.web import PageHandlers


class Server:
    """A started server: the port it really bound and a bounded `stop`."""

    def __init__(
        self,
        runner: web.AppRunner,
        listener: asyncio.Server,
        guard: ConnectionGuard,
        shutdown_timeout: float,
        restore: Callable[[], None],
    ) -> None:
        self._runner = runner
        self._listener = listener
        self._guard = guard
        self._port = int(listener.sockets[0].getsockname()[1])
        self._shutdown_timeout = shutdown_timeout
        self._restore = restore
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        return self._port

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._guard)

    @property
    def connection_cap(self) -> int:
        """At most this many connections are open at once."""
        return self._guard.cap

    async def stop(self) -> None:
        """Stop listening, give in-flight requests `shutdown_timeout`, then close."""
        if self._stopped:
            return
        self._stopped = True
        self._listener.close()
        self._restore()
        # aiohttp already bounds the wait for in-flight handlers by
        # shutdown_timeout; the outer timeout also bounds closing the sockets and
        # the app's cleanup hooks, with a second of slack for them.
        try:
            async with asyncio.timeout(self._shutdown_timeout + 1.0):
                await self._runner.cleanup()
        except TimeoutError:
            log.warning("HTTP server did not stop within %.1fs", self._shutdown_timeout + 1.0)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def build_app(
    backend: Backend,
    settings: ServerSettings,
    *,
    routes: Iterable[web.AbstractRouteDef] = (),
    pacer: Pacer | None = None,
) -> web.Application:
    """The aiohttp application serving `backend`, with its rate limits.

    `routes` are added as they are, e.g. the daemon's `/metrics`, which lives
    with the metrics registry rather than here. The connection limits need the
    listening socket: `start` adds them. `pacer`: the daemon's, which paces the
    encoding of long lists with the rest of its work on the loop.
    """
    app, _ = _build(backend, settings, routes, pacer)
    return app


def _build(
    backend: Backend,
    settings: ServerSettings,
    routes: Iterable[web.AbstractRouteDef],
    pacer: Pacer | None,
) -> tuple[web.Application, _Gate]:
    gate = _Gate(settings.limits)
    # client_max_size bounds bodies that arrive without a Content-Length
    # (chunked) too; the hooks check the declared length before reading.
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[gate.middleware, _json_errors]
    )
    reads = ReadHandlers(backend, pacer)
    writes = WriteHandlers(backend, settings)
    app.add_routes(
        [
            web.get("/healthz", reads.healthz),
            web.get("/readyz", reads.readyz),
            web.get("/api/v1/status", reads.status),
            web.get("/api/v1/resources", reads.resources),
            web.get("/api/v1/resources/{kind}/{name}", reads.resource),
            web.get("/api/v1/events", reads.events),
            web.post("/api/v1/sync", writes.sync),
            web.post("/hooks/github", writes.github),
            web.post("/hooks/gitlab", writes.gitlab),
            web.post("/hooks/generic", writes.generic),
        ]
    )
    app.add_routes(PageHandlers(backend).routes())
    app.add_routes(list(routes))
    return app, gate


async def start(
    backend: Backend,
    settings: ServerSettings,
    *,
    routes: Iterable[web.AbstractRouteDef] = (),
    pacer: Pacer | None = None,
) -> Server:
    """Build the application, bind `settings.host:settings.port` and serve."""
    limits = settings.limits
    app, gate = _build(backend, settings, routes, pacer)
    runner = web.AppRunner(
        app,
        # The daemon owns signal handling and the shutdown order.
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        keepalive_timeout=limits.idle_timeout,
        # how long an unread body is drained after the response before closing
        lingering_time=limits.body_timeout,
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        assert runner.server is not None
        guard = ConnectionGuard(
            runner.server,
            cap=connection_cap(limits.max_connections),
            header_timeout=limits.header_timeout,
        )
        gate.guard = guard
        # Our own listener instead of a TCPSite: the guard must see every
        # connection the moment it is accepted.
        listener = await loop.create_server(guard.protocol, settings.host, settings.port)
    except BaseException:
        await runner.cleanup()
        raise
    previous = loop.get_exception_handler()

    def fallback(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    ours = accept_error_handler(guard, fallback)
    loop.set_exception_handler(ours)
    quiet = _BadRequestLines()
    aiohttp_log = logging.getLogger("aiohttp.server")
    aiohttp_log.addFilter(quiet)

    def restore() -> None:
        aiohttp_log.removeFilter(quiet)
        if loop.get_exception_handler() is ours:
            loop.set_exception_handler(previous)

    server = Server(runner, listener, guard, settings.shutdown_timeout, restore)
    log.info(
        "HTTP server listening on %s:%d (at most %d connections)",
        settings.host,
        server.port,
        guard.cap,
    )
    return server


class _BadRequestLines(logging.Filter):
    """aiohttp logs every request it cannot parse (a header line too long, too
    many headers, garbage) as an error with a traceback; anyone who reaches the
    port can send those at will. This makes each one warning line saying what
    was wrong, which the log's repeat filter then folds together."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            problem = (exc.message or type(exc).__name__).strip().splitlines()[0][:120]
            record.msg, record.args = "bad HTTP request from %s: %s", (peer, problem)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text errors (404, 405, 413) and crashes into JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error(exc.status, (exc.reason or "error").lower())
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        # The traceback goes to the log; the client learns only that it failed.
        log.exception("error serving %s %s", request.method, request.path)
        return error(500, "internal error")


class _Gate:
    """The first middleware: tells the connection guard when a connection is
    inside a request, and answers 429 past a route group's rate limit before a
    body is read or a signature checked."""

    def __init__(self, limits: HttpLimits) -> None:
        self.guard: ConnectionGuard | None = None
        self._hooks = TokenBucket(limits.hook_rate, limits.hook_burst)
        self._sync = TokenBucket(limits.sync_rate, limits.sync_burst)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = self.guard
        if guard is not None:
            guard.request_started(request.protocol)
        try:
            limited = self._limited(request)
            if limited is not None:
                return limited
            return await handler(request)
        finally:
            if guard is not None:
                guard.request_finished(request.protocol)

    def _limited(self, request: web.Request) -> web.Response | None:
        path = request.path
        if path.startswith("/hooks/"):
            bucket, what = self._hooks, "webhooks"
        elif path == "/api/v1/sync":
            bucket, what = self._sync, "the sync API"
        else:
            return None
        wait = bucket.take()
        if wait == 0.0:
            return None
        retry = max(1, math.ceil(wait))
        log.warning(
            "rate limit: %s take at most %g requests a second (bursts of %d); answered 429 to %s",
            what,
            bucket.rate,
            bucket.burst,
            request.remote,
        )
        return web.json_response(
            {
                "error": f"too many requests: {what} take at most {bucket.rate:g} a second "
                f"(bursts of {bucket.burst}); retry after {retry}s"
            },
            status=429,
            headers={"Retry-After": str(retry)},
        )
