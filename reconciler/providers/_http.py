"""The HTTP client of `Connection` type `http`: one httpx client per connection.

Providers of objects behind a REST API (`HttpObject`) and the Connection
provider's reachability check (`ping`) send every request through `request`,
which picks the client of the connection, bounds the requests in flight on it
(`maxInFlight`) and the size of each answer, and turns transport failures into
the provider errors the engine understands:

- the server cannot be reached (refused, reset, timed out): TemporaryError;
- its TLS certificate fails verification, or the URL is unusable: PermanentError.

Clients are cached by the running event loop and by the connection's JSON dump,
which holds the keyed digests of its secrets, never the secrets themselves. An
`httpx.AsyncClient` belongs to the loop that made it (its sockets are that loop's
transports), and one process runs several loops in turn (the CLI one per
command, the tests one per test): each loop has its own clients, and a small task
per loop closes them when the loop's run ends (asyncio.run and asyncio.Runner
cancel what is left). A connection that changed is a new key: `retain` retires
the clients of connections no longer declared, closing each when its last
request is done.

Secrets: the connection's header values, bearer token and basic password (and
the Authorization value made from them) are listed by `secrets`, so an error
that quotes an answer of the server can be masked with them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from reconciler.model import (
    WITHHELD_MESSAGE,
    PermanentError,
    Sensitive,
    TemporaryError,
    mask,
    quotes_a_secret,
)
from reconciler.providers.connection import HttpConnection

MAX_BODY = 8 * 1024 * 1024
"""Largest answer read; a bigger one is refused while it streams in."""
SHOWN_BYTES = 512
"""Bytes of an error answer quoted in the error (after redaction)."""
MAX_RETRY_AFTER = 3600.0
"""A Retry-After longer than this is taken as this."""
DOWN_WINDOW = 1.0
"""Seconds after a failed connect during which requests on the same connection
fail at once with the same error instead of each waiting for its own timeout
(a thousand objects behind a dead server would otherwise take hours)."""


@dataclass
class _Entry:
    client: httpx.AsyncClient
    slots: asyncio.Semaphore
    secrets: tuple[str, ...]
    busy: int = 0
    retired: bool = False
    down_until: float = 0.0
    down_message: str = ""


@dataclass
class _LoopClients:
    """The clients of one event loop, and the task that closes them with it."""

    by_key: dict[str, _Entry] = field(default_factory=dict)
    closing: set[asyncio.Task[None]] = field(default_factory=set)
    janitor: asyncio.Task[None] | None = None


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
    weakref.WeakKeyDictionary()
)


async def _janitor(clients: _LoopClients) -> None:
    """Waits for the end of its loop's run (a cancellation), then closes every client."""
    try:
        await asyncio.Event().wait()
    finally:
        entries = list(clients.by_key.values())
        clients.by_key.clear()
        pending = list(clients.closing)
        await asyncio.gather(
            *(e.client.aclose() for e in entries), *pending, return_exceptions=True
        )


def _loop_clients() -> _LoopClients:
    loop = asyncio.get_running_loop()
    clients = _LOOPS.get(loop)
    if clients is None:
        clients = _LOOPS[loop] = _LoopClients()
    if clients.janitor is None or clients.janitor.done():
        clients.janitor = loop.create_task(_janitor(clients), name="http clients janitor")
    return clients


def secrets(conn: HttpConnection) -> list[str]:
    """Every secret the connection sends: header values, the bearer token, the
    basic password and the Authorization value made from it."""
    found: list[str] = [v for v in conn.headers.values() if isinstance(v, Sensitive)]
    if conn.auth is not None and isinstance(conn.auth.bearer, str):
        found.append(conn.auth.bearer)
    if conn.auth is not None and conn.auth.basic is not None:
        basic = conn.auth.basic
        if isinstance(basic.password, str):
            found.append(basic.password)
            pair = f"{basic.username}:{basic.password}".encode()
            found.append(base64.b64encode(pair).decode())
    return [str.__str__(s) for s in found]


def redact(text: str, values: Iterable[str]) -> str:
    """`text` with each of `values` masked; withheld whole if a piece remains."""
    listed = [v for v in values if v]
    if not listed:
        return text
    text = mask(text, listed)
    return WITHHELD_MESSAGE if quotes_a_secret(text, listed) else text


def _make(conn: HttpConnection) -> _Entry:
    headers = {name: str.__str__(value) for name, value in conn.headers.items()}
    auth: httpx.Auth | None = None
    if conn.auth is not None and isinstance(conn.auth.bearer, str):
        headers["Authorization"] = "Bearer " + str.__str__(conn.auth.bearer)
    elif conn.auth is not None and conn.auth.basic is not None:
        basic = conn.auth.basic
        password = basic.password if isinstance(basic.password, str) else ""
        auth = httpx.BasicAuth(basic.username, str.__str__(password))
    verify: ssl.SSLContext | bool = conn.verify
    if conn.verify and conn.ca_file is not None:
        try:
            verify = ssl.create_default_context(cafile=conn.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise PermanentError(f"cannot read the CA file {conn.ca_file}: {exc}") from None
    client = httpx.AsyncClient(
        base_url=conn.base_url,
        headers=headers,
        auth=auth,
        verify=verify,
        # the pool never waits: `slots` bounds the requests, so a long queue of
        # objects cannot time out waiting for a connection
        timeout=httpx.Timeout(conn.timeout, pool=None),
        limits=httpx.Limits(
            max_connections=conn.max_in_flight, max_keepalive_connections=conn.max_in_flight
        ),
        follow_redirects=False,
        trust_env=False,  # a proxy or netrc of the daemon's environment is not the config's
    )
    return _Entry(client, asyncio.Semaphore(conn.max_in_flight), tuple(secrets(conn)))


def _entry(conn: HttpConnection) -> _Entry:
    clients = _loop_clients()
    key = conn.model_dump_json()
    entry = clients.by_key.get(key)
    if entry is None:
        entry = clients.by_key[key] = _make(conn)
    return entry


def retain(conns: Iterable[HttpConnection]) -> None:
    """Retire the running loop's clients of every connection not in `conns` (one
    that changed or was removed); each is closed when its last request is done."""
    try:
        clients = _loop_clients()
    except RuntimeError:
        return  # no running loop: no clients of this loop to retire
    keep = {conn.model_dump_json() for conn in conns}
    for key in [k for k in clients.by_key if k not in keep]:
        entry = clients.by_key.pop(key)
        entry.retired = True
        if entry.busy == 0:
            _close(clients, entry)


def _close(clients: _LoopClients, entry: _Entry) -> None:
    task = asyncio.get_running_loop().create_task(entry.client.aclose(), name="close http client")
    clients.closing.add(task)
    task.add_done_callback(clients.closing.discard)


@dataclass(frozen=True, slots=True)
class Answer:
    """A response read whole: status, headers and (bounded) body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json_object(self, where: str) -> dict[str, Any]:
        """The body as a JSON object; PermanentError naming `where` otherwise."""
        try:
            data = json.loads(self.body)
        except ValueError:
            raise PermanentError(
                f"{where} answered {self.status} with a body that is not JSON"
            ) from None
        if not isinstance(data, dict):
            raise PermanentError(
                f"{where} answered {self.status} with a JSON {type(data).__name__}, "
                "expected a JSON object"
            )
        return data

    def retry_after(self) -> float | None:
        """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
        value = self.headers.get("retry-after")
        if value is None:
            return None
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - time.time()
        if seconds != seconds:  # NaN
            return None
        return min(max(seconds, 0.0), MAX_RETRY_AFTER)

    def shown(self, values: Iterable[str]) -> str:
        """The first bytes of the body as text, redacted, for an error."""
        text = self.body[:SHOWN_BYTES].decode("utf-8", "replace")
        more = "..." if len(self.body) > SHOWN_BYTES else ""
        return redact(text, values) + more


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _transport_error(conn: HttpConnection, what: str, exc: httpx.HTTPError) -> Exception:
    tls = _tls_failure(exc)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or tls
        return PermanentError(
            f"{what}: TLS failed ({reason}); give the server's CA in the connection's caFile"
        )
    detail = redact(str(exc) or type(exc).__name__, secrets(conn))
    if isinstance(exc, httpx.TimeoutException):
        return TemporaryError(f"{what}: timed out after {conn.timeout:g} s ({detail})")
    if isinstance(exc, httpx.TransportError) and not isinstance(
        exc, httpx.UnsupportedProtocol | httpx.ProxyError
    ):
        return TemporaryError(f"{what}: cannot reach the server ({detail})")
    return PermanentError(f"{what}: {detail}")


@contextlib.asynccontextmanager
async def _slot(conn: HttpConnection) -> AsyncIterator[_Entry]:
    entry = _entry(conn)
    entry.busy += 1
    try:
        async with entry.slots:
            yield entry
    finally:
        entry.busy -= 1
        if entry.retired and entry.busy == 0:
            _close(_loop_clients(), entry)


async def request(
    conn: HttpConnection,
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """Send one request on the connection's client (`url` relative to its
    baseUrl; `body` sent as JSON when not None) and read its answer whole.

    Raises TemporaryError when the server cannot be reached or times out, and
    PermanentError for a TLS failure, an unusable URL or an answer over MAX_BODY.
    Any HTTP status is an answer: the caller decides what it means."""
    what = f"{method} {conn.base_url}{url}"
    async with _slot(conn) as entry:
        now = time.monotonic()
        if now < entry.down_until:
            raise TemporaryError(entry.down_message)
        content = None if body is None else _json_bytes(body)
        sent = dict(headers or {})
        if content is not None:
            sent["Content-Type"] = "application/json"
        sent.setdefault("Accept", "application/json")
        try:
            async with entry.client.stream(method, url, content=content, headers=sent) as resp:
                length = resp.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > MAX_BODY:
                    raise PermanentError(
                        f"{what}: the answer is {length} bytes, over the limit of {MAX_BODY}"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise PermanentError(f"{what}: the answer is over {MAX_BODY} bytes")
                    chunks.append(chunk)
                return Answer(resp.status_code, resp.headers, b"".join(chunks))
        except httpx.HTTPError as exc:
            error = _transport_error(conn, what, exc)
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and isinstance(
                error, TemporaryError
            ):
                entry.down_until = time.monotonic() + DOWN_WINDOW
                entry.down_message = str(error)
            raise error from None


def _json_bytes(body: Any) -> bytes:
    # Sensitive values are str: json writes their text, which is what is sent
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def ping(conn: HttpConnection) -> None:
    """Check that the server answers: GET of the baseUrl. Any HTTP answer means
    reachable, except 401 and 403 (the credentials are refused: PermanentError).
    TemporaryError when it cannot be reached; PermanentError for TLS failures."""
    answer = await request(conn, "GET", "")
    if answer.status in (401, 403):
        raise PermanentError(
            f"GET {conn.base_url} answered {answer.status}: the connection's credentials "
            f"are refused ({answer.shown(secrets(conn))})"
        )


__all__ = ["MAX_BODY", "Answer", "ping", "redact", "request", "retain", "secrets"]
