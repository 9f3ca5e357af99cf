"""The daemon's HTTP server: health probes, a read-only JSON API, a token-guarded
sync trigger and signed webhooks that ask the daemon to fetch the source now.

The server knows the daemon only through `Backend`, a handful of quick,
non-blocking methods answered from memory; it imports nothing else of ours but
its limits (`httplimits`), so it sits beside the daemon without a layer to point
at. Nothing here is global: `build_app` wires one `Backend` and one
`ServerSettings` into an aiohttp application, and `start` binds it and returns a
`Server` to stop.

Routes:

    GET  /healthz                         200 "ok" while the event loop is alive
    GET  /readyz                          200 "ready"; 503 "not ready: <reason>"
    GET  /api/v1/status                   the daemon's status document
    GET  /api/v1/resources[?kind=K][&instance=Bundle/I]  {"resources": [...]}
    GET  /api/v1/resources/{kind}/{name}  one resource; 404 when unknown
    GET  /api/v1/events                   {"events": [...]}; filters below
    POST /api/v1/sync                     Authorization: Bearer <api_token> -> 202
    POST /hooks/github                    X-Hub-Signature-256 (HMAC-SHA256)
    POST /hooks/gitlab                    X-Gitlab-Token
    POST /hooks/generic                   X-Signature-256 (HMAC-SHA256)

Event filters: `resource=Kind/name`, `kind=Kind`, `instance=Bundle/name` (the
bundle instance that made the resource), `since=<unix seconds, float>`,
`limit=<1..1000>` (default 100). A malformed or unknown parameter is a 400.
Every resource and event names its bundle instance (`instance`, "" when written
flat); the status document lists the instances of the enforced revision.

Webhook authentication, all with `webhook_secret` and compared in constant time:

- GitHub: `X-Hub-Signature-256: sha256=<hex>` where `<hex>` is the lowercase hex
  HMAC-SHA256 of the raw request body keyed with the secret. `X-GitHub-Event:
  ping` is answered `{"pong": true}` (after verification), `push` requests a
  sync, any other event is accepted and ignored.
- GitLab: `X-Gitlab-Token: <secret>`. `X-Gitlab-Event: Push Hook` or `Tag Push
  Hook` requests a sync, any other event is accepted and ignored.
- Generic: `X-Signature-256: sha256=<hex>`, the same scheme as GitHub's, so any
  CI system can sign with e.g.
  `openssl dgst -sha256 -hmac "$SECRET" -hex < body`. Every verified request
  asks for a sync; the body is not interpreted.

A missing and a wrong signature get the same 401, so a caller learns nothing
about which part failed. Bodies above `max_body_bytes` (1 MiB) are a 413, bodies
not received within `limits.body_timeout` a 408. With no
`webhook_secret` the hooks answer 404, with no `api_token` the sync endpoint
answers 404, each saying so. The server only asks for syncs: coalescing a burst
of requests into one fetch is the daemon's job.

Limits (`HttpLimits`, see reconciler/httplimits.py): the webhooks and the sync
endpoint each have a token bucket, checked before anything else; past it the
answer is 429 with `Retry-After`. A connection must send a complete request head
within `header_timeout`, may stay idle between requests for `idle_timeout`, and
at most `connection_cap(max_connections)` connections are open at once (the
least recently active idle one is closed to make room). aiohttp bounds the
request head itself: request line and each header at most 8190 bytes, at most
128 headers, else 400 (431 for headers) and the connection is closed.

Every JSON response is `application/json`; every error is `{"error": "..."}`.
Secrets never appear in responses, logs or the settings' repr.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

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

__all__ = ["Backend", "HttpLimits", "Server", "ServerSettings", "build_app", "start"]

_log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
EVENTS_DEFAULT_LIMIT: Final = 100
EVENTS_MAX_LIMIT: Final = 1000

# GitLab names push events this way; tag pushes change what a tag ref points at,
# so they can change the revision the daemon follows too.
_GITLAB_SYNC_EVENTS: Final = frozenset({"Push Hook", "Tag Push Hook"})
# One body for every authentication failure: distinguishing "missing" from
# "wrong" would help someone probing the endpoint and nobody else.
_UNAUTHORIZED_HOOK: Final = "unauthorized: missing or invalid webhook signature"
_UNAUTHORIZED_API: Final = "unauthorized: a valid 'Authorization: Bearer <token>' is required"


class Backend(Protocol):
    """What the server needs from the daemon.

    Every method is called on the event loop from a request handler, so each must
    answer quickly from memory (or a cache) and never block; what needs the store's
    database (`events`) is a coroutine; `request_sync` only records the wish and
    returns.
    """

    def live(self) -> bool:
        """True while the daemon's event loop is running (liveness)."""
        ...

    def ready(self) -> tuple[bool, str]:
        """(True, "") once the store is open and a revision loaded, else (False, why)."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-able status document, already redacted by the daemon."""
        ...

    def resources(self, kind: str | None) -> list[dict[str, Any]]:
        """Every resource, or those of one kind; each with its `instance`."""
        ...

    def resource(self, kind: str, name: str) -> dict[str, Any] | None:
        """One resource, or None when there is no `kind/name`."""
        ...

    async def events(
        self,
        *,
        resource: str | None,
        kind: str | None,
        since: float | None,
        limit: int,
        instance: str | None,
    ) -> list[dict[str, Any]]:
        """Recent events, newest last, filtered (`instance`: of the resources that
        bundle instance made); at most `limit` of them."""
        ...

    def request_sync(self, reason: str) -> None:
        """Ask for a source fetch soon; the daemon coalesces bursts."""
        ...


@dataclass(frozen=True)
class ServerSettings:
    """Where to listen and which secrets guard the write endpoints.

    `None` disables the endpoint a secret guards. The secrets are left out of the
    repr so that logging the settings cannot leak them.
    """

    host: str = "127.0.0.1"
    port: int = 9108
    webhook_secret: bytes | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)
    max_body_bytes: int = MiB
    shutdown_timeout: float = 5.0
    limits: HttpLimits = field(default_factory=HttpLimits)

    def __post_init__(self) -> None:
        # An empty secret would make HMAC keyless and the GitLab token check
        # accept an empty header: refuse it rather than run unguarded.
        if self.webhook_secret is not None and not self.webhook_secret:
            raise ValueError("webhook_secret: expected a non-empty secret or None, got empty")
        if self.api_token is not None and not self.api_token.strip():
            raise ValueError("api_token: expected a non-empty token or None, got empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: expected 0..65535, got {self.port}")
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes: expected > 0, got {self.max_body_bytes}")
        if self.shutdown_timeout <= 0:
            raise ValueError(f"shutdown_timeout: expected > 0, got {self.shutdown_timeout}")


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
            _log.warning("HTTP server did not stop within %.1fs", self._shutdown_timeout + 1.0)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def build_app(
    backend: Backend,
    settings: ServerSettings,
    *,
    routes: Iterable[web.AbstractRouteDef] = (),
) -> web.Application:
    """The aiohttp application serving `backend`, with its rate limits.

    `routes` are added as they are, e.g. the daemon's `/metrics`, which lives
    with the metrics registry rather than here. The connection limits need the
    listening socket: `start` adds them.
    """
    app, _ = _build(backend, settings, routes)
    return app


def _build(
    backend: Backend, settings: ServerSettings, routes: Iterable[web.AbstractRouteDef]
) -> tuple[web.Application, _Gate]:
    gate = _Gate(settings.limits)
    # client_max_size bounds bodies that arrive without a Content-Length
    # (chunked) too; _read_body checks the declared length before reading.
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[gate.middleware, _json_errors]
    )
    handlers = _Handlers(backend, settings)
    app.add_routes(
        [
            web.get("/healthz", handlers.healthz),
            web.get("/readyz", handlers.readyz),
            web.get("/api/v1/status", handlers.status),
            web.get("/api/v1/resources", handlers.resources),
            web.get("/api/v1/resources/{kind}/{name}", handlers.resource),
            web.get("/api/v1/events", handlers.events),
            web.post("/api/v1/sync", handlers.sync),
            web.post("/hooks/github", handlers.github),
            web.post("/hooks/gitlab", handlers.gitlab),
            web.post("/hooks/generic", handlers.generic),
        ]
    )
    app.add_routes(list(routes))
    return app, gate


async def start(
    backend: Backend,
    settings: ServerSettings,
    *,
    routes: Iterable[web.AbstractRouteDef] = (),
) -> Server:
    """Build the application, bind `settings.host:settings.port` and serve."""
    limits = settings.limits
    app, gate = _build(backend, settings, routes)
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
    _log.info(
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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


_LIST_SLICE = 256
"""Items of a long list encoded and sent per loop iteration."""


async def _json_list(
    request: web.Request, key: str, items: list[dict[str, Any]]
) -> web.StreamResponse:
    """`{key: items}` as JSON; a long list is encoded and written a slice at a
    time (chunked), so 12,000 resources never hold the loop for one body."""
    if len(items) <= _LIST_SLICE:
        return web.json_response({key: items})
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    await response.prepare(request)
    await response.write(f'{{"{key}": ['.encode())
    for start in range(0, len(items), _LIST_SLICE):
        part = ", ".join(json.dumps(item) for item in items[start : start + _LIST_SLICE])
        await response.write((", " if start else "").encode() + part.encode())
        await asyncio.sleep(0)
    await response.write(b"]}")
    await response.write_eof()
    return response


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text errors (404, 405, 413) and crashes into JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, (exc.reason or "error").lower())
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        # The traceback goes to the log; the client learns only that it failed.
        _log.exception("error serving %s %s", request.method, request.path)
        return _error(500, "internal error")


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
        _log.warning(
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


class _BadRequest(Exception):
    """A query parameter with a bad value; its message becomes the 400 body."""


class _Handlers:
    """Request handlers bound to one backend and one set of settings."""

    def __init__(self, backend: Backend, settings: ServerSettings) -> None:
        self._backend = backend
        self._settings = settings
        self._secret = settings.webhook_secret
        self._token = settings.api_token.encode() if settings.api_token is not None else None

    # Probes: plain text, which is all a probe (or a human with curl) needs.

    async def healthz(self, request: web.Request) -> web.Response:
        if self._backend.live():
            return web.Response(text="ok")
        return web.Response(status=503, text="not live")

    async def readyz(self, request: web.Request) -> web.Response:
        ready, reason = self._backend.ready()
        if ready:
            return web.Response(text="ready")
        return web.Response(status=503, text=f"not ready: {reason or 'unknown reason'}")

    # Read-only API.

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._backend.status())

    async def resources(self, request: web.Request) -> web.StreamResponse:
        try:
            _only_params(request, {"kind", "instance"})
            kind = _nonempty(request, "kind")
            instance = _kind_name(request, "instance")
        except _BadRequest as exc:
            return _error(400, str(exc))
        found = self._backend.resources(kind)
        if instance is not None:
            found = [r for r in found if r.get("instance") == instance]
        return await _json_list(request, "resources", found)

    async def resource(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        name = request.match_info["name"]
        found = self._backend.resource(kind, name)
        if found is None:
            return _error(404, f"no resource {kind}/{name}")
        return web.json_response(found)

    async def events(self, request: web.Request) -> web.StreamResponse:
        try:
            _only_params(request, {"resource", "kind", "instance", "since", "limit"})
            resource = _kind_name(request, "resource")
            kind = _nonempty(request, "kind")
            instance = _kind_name(request, "instance")
            since = _since(request)
            limit = _limit(request)
        except _BadRequest as exc:
            return _error(400, str(exc))
        events = await self._backend.events(
            resource=resource, kind=kind, since=since, limit=limit, instance=instance
        )
        return await _json_list(request, "events", events)

    # Writes: each guarded by a secret, each only asks the daemon for a sync.

    async def sync(self, request: web.Request) -> web.Response:
        if self._token is None:
            return _error(404, "sync API disabled: no api_token configured")
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        valid = scheme.lower() == "bearer" and hmac.compare_digest(
            _header_bytes(presented.strip()), self._token
        )
        if not valid:
            _log.warning("sync API: rejected unauthenticated request from %s", request.remote)
            return web.json_response(
                {"error": _UNAUTHORIZED_API},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="reconciler"'},
            )
        self._backend.request_sync(f"api request from {request.remote}")
        return web.json_response({"accepted": True}, status=202)

    async def github(self, request: web.Request) -> web.Response:
        rejected = await self._verify_hmac(request, "X-Hub-Signature-256", "github")
        if rejected is not None:
            return rejected
        event = request.headers.get("X-GitHub-Event", "")
        if event == "ping":
            return web.json_response({"pong": True})
        if event == "push":
            return self._accept("github push")
        return _ignored(f"GitHub event {_shown(event)} does not trigger a sync")

    async def gitlab(self, request: web.Request) -> web.Response:
        if self._secret is None:
            return _hooks_disabled()
        presented = request.headers.get("X-Gitlab-Token")
        if presented is None or not hmac.compare_digest(_header_bytes(presented), self._secret):
            return _reject_hook(request, "gitlab")
        # Read (and bound) the body even though nothing in it is needed, so an
        # oversized request is a 413 here as on the other hooks.
        body = await _read_body(request, self._settings)
        if isinstance(body, web.Response):
            return body
        event = request.headers.get("X-Gitlab-Event", "")
        if event in _GITLAB_SYNC_EVENTS:
            return self._accept(f"gitlab {event.lower()}")
        return _ignored(f"GitLab event {_shown(event)} does not trigger a sync")

    async def generic(self, request: web.Request) -> web.Response:
        rejected = await self._verify_hmac(request, "X-Signature-256", "generic")
        if rejected is not None:
            return rejected
        return self._accept("generic")

    async def _verify_hmac(
        self, request: web.Request, header: str, source: str
    ) -> web.Response | None:
        """None when the body is signed with the secret, else the response to send."""
        if self._secret is None:
            return _hooks_disabled()
        presented = request.headers.get(header)
        if presented is None:
            return _reject_hook(request, source)
        body = await _read_body(request, self._settings)
        if isinstance(body, web.Response):
            return body
        expected = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        # Hex digits are case-insensitive; lowercasing the presented value leaks
        # nothing since the comparison itself stays constant-time.
        if not hmac.compare_digest(_header_bytes(presented.strip().lower()), expected.encode()):
            return _reject_hook(request, source)
        return None

    def _accept(self, what: str) -> web.Response:
        _log.info("webhook %s: requesting a sync", what)
        self._backend.request_sync(f"webhook {what}")
        return web.json_response({"accepted": True}, status=202)


async def _read_body(request: web.Request, settings: ServerSettings) -> bytes | web.Response:
    """The raw body; a 413 response when it is larger than `max_body_bytes`, a
    408 when it does not arrive within `body_timeout` (a dribbled body), a 400
    when the client closes before sending all of it."""
    limit, timeout = settings.max_body_bytes, settings.limits.body_timeout
    # Refuse on the declared length without reading a byte of it; chunked
    # bodies are cut off by the application's client_max_size instead.
    if request.content_length is None or request.content_length <= limit:
        try:
            async with asyncio.timeout(timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            pass
        except TimeoutError:
            response = _error(408, f"request body not received within {timeout:g}s")
            response.force_close()  # the rest of the body is not worth waiting for
            return response
        except ConnectionResetError:  # the sender went away before its whole body
            _log.warning("%s %s: client closed before the body ended", request.method, request.path)
            response = _error(400, "connection closed before the request body ended")
            response.force_close()
            return response
    return _error(413, f"request body too large: at most {limit} bytes accepted")


def _header_bytes(value: str) -> bytes:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape; this undoes it
    # exactly, so any byte sequence compares (and fails) without raising.
    return value.encode("utf-8", "surrogateescape")


def _hooks_disabled() -> web.Response:
    return _error(404, "webhooks disabled: no webhook_secret configured")


def _reject_hook(request: web.Request, source: str) -> web.Response:
    _log.warning("webhook %s: rejected request from %s: bad signature", source, request.remote)
    return _error(401, _UNAUTHORIZED_HOOK)


def _ignored(note: str) -> web.Response:
    return web.json_response({"ignored": True, "note": note}, status=202)


def _shown(value: str) -> str:
    """An unsigned header value, quoted and cut short, fit to echo in a note."""
    return repr(value[:64]) if value else "(none)"


def _only_params(request: web.Request, allowed: set[str]) -> None:
    # A misspelt filter silently ignored would return unfiltered data that looks
    # filtered; refusing it is kinder.
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise _BadRequest(
            f"unknown query parameter(s) {', '.join(unknown)}; "
            f"expected any of {', '.join(sorted(allowed))}"
        )
    repeated = sorted(key for key in allowed if len(request.query.getall(key, [])) > 1)
    if repeated:
        raise _BadRequest(f"query parameter(s) given more than once: {', '.join(repeated)}")


def _nonempty(request: web.Request, key: str) -> str | None:
    value = request.query.get(key)
    if value is None:
        return None
    if not value:
        raise _BadRequest(f"{key}: expected a value, got an empty string")
    return value


def _kind_name(request: web.Request, key: str) -> str | None:
    """A `Kind/name` parameter: a resource id, or a bundle instance's id."""
    value = _nonempty(request, key)
    if value is not None:
        kind_part, _, name_part = value.partition("/")
        if not kind_part or not name_part:
            raise _BadRequest(f"{key}: expected Kind/name, got {value!r}")
    return value


def _since(request: web.Request) -> float | None:
    raw = request.query.get("since")
    if raw is None:
        return None
    try:
        since = float(raw)
    except ValueError:
        raise _BadRequest(f"since: expected unix seconds (a number), got {raw!r}") from None
    if not math.isfinite(since) or since < 0:
        raise _BadRequest(f"since: expected finite unix seconds >= 0, got {raw!r}")
    return since


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return EVENTS_DEFAULT_LIMIT
    expected = f"limit: expected an integer 1..{EVENTS_MAX_LIMIT}, got {raw!r}"
    try:
        limit = int(raw)
    except ValueError:
        raise _BadRequest(expected) from None
    if not 1 <= limit <= EVENTS_MAX_LIMIT:
        raise _BadRequest(expected)
    return limit
