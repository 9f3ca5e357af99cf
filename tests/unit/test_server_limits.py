"""The HTTP server's limits, crossed for real: raw TCP connections to a server on
127.0.0.1 that send nothing, dribble a request head or body, pile up past the
connection cap or call the hooks faster than their rate; and the log filter
that keeps what such callers provoke to one line per kind.

The backend is test_server's in-memory stand-in; the server and the sockets are
real. Durations are shortened through `HttpLimits` so a crossing takes a
fraction of a second.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from reconciler.httplimits import (
    FD_RESERVE,
    MIN_CONNECTIONS,
    HttpLimits,
    TokenBucket,
    connection_cap,
)
from reconciler.logs import RepeatFilter
from reconciler.server import Server, ServerSettings, start
from tests.unit.test_server import SECRET, TOKEN, MemoryBackend, _sign

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
async def serve(backend: MemoryBackend) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []

    async def _serve(**limits: Any) -> Server:
        settings = ServerSettings(
            port=0, webhook_secret=SECRET, api_token=TOKEN, limits=HttpLimits(**limits)
        )
        server = await start(backend, settings)
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def _connect(server: Server) -> Streams:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closes the connection (EOF or reset), reading
    and discarding whatever it sends first; fails after `limit` seconds."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        while True:
            try:
                if not await reader.read(65536):
                    break
            except ConnectionResetError:
                break
    return time.monotonic() - started


async def _still_open(reader: asyncio.StreamReader, seconds: float = 0.3) -> bool:
    try:
        async with asyncio.timeout(seconds):
            return bool(await reader.read(1))  # data would be a surprise, EOF a close
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


async def _get(streams: Streams, path: str = "/healthz") -> tuple[int, bytes]:
    """One keep-alive GET on a raw connection: (status, body)."""
    reader, writer = streams
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split()[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        return status, await reader.readexactly(length)


async def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 5) -> None:
    """Poll `condition` for up to `seconds` (what the server does to a socket has
    no event to await here)."""
    for _ in range(int(seconds * 100)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# Header, idle and body timeouts


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    server = await serve(header_timeout=0.5)
    reader, writer = await _connect(server)
    try:
        elapsed = await _closed_after(reader, limit=5)
    finally:
        writer.close()
    assert 0.4 <= elapsed < 2.0, f"closed after {elapsed:.2f}s, header timeout 0.5s"
    await _wait_for(lambda: server.connections == 0, "the guard to forget it")


async def test_a_dribbled_request_head_is_closed_after_the_header_timeout(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    # slowloris: a byte now and then keeps aiohttp's parser waiting, not the guard
    server = await serve(header_timeout=0.5)
    reader, writer = await _connect(server)

    async def dribble() -> None:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        for n in range(100):
            await asyncio.sleep(0.05)
            writer.write(f"X-{n}: y\r\n".encode())

    task = asyncio.create_task(dribble())
    try:
        elapsed = await _closed_after(reader, limit=5)
    finally:
        task.cancel()
        writer.close()
    assert 0.4 <= elapsed < 2.0, f"closed after {elapsed:.2f}s while dribbling"


async def test_a_served_connection_outlives_the_header_timeout_until_idle_timeout(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    server = await serve(header_timeout=0.3, idle_timeout=1.5)
    streams = await _connect(server)
    try:
        assert await _get(streams) == (200, b"ok")
        await asyncio.sleep(0.8)  # past the header timeout, within the idle timeout
        assert await _get(streams) == (200, b"ok")
        elapsed = await _closed_after(streams[0], limit=5)
    finally:
        streams[1].close()
    assert 1.2 <= elapsed < 3.5, f"idle connection closed after {elapsed:.2f}s, idle 1.5s"


async def test_a_dribbled_body_is_a_408_after_the_body_timeout(
    serve: Callable[..., Awaitable[Server]], backend: MemoryBackend
) -> None:
    server = await serve(body_timeout=0.5)
    reader, writer = await _connect(server)
    head = (
        "POST /hooks/generic HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n"
        f"X-Signature-256: {_sign(b'x' * 100)}\r\n\r\n"
    )
    writer.write(head.encode() + b"x" * 10)
    started = time.monotonic()
    try:
        async with asyncio.timeout(5):
            response = await reader.readuntil(b"\r\n\r\n")
        elapsed = time.monotonic() - started
        assert response.startswith(b"HTTP/1.1 408"), response
        assert 0.4 <= elapsed < 2.0, f"408 after {elapsed:.2f}s, body timeout 0.5s"
        await _closed_after(reader, limit=2)  # and the rest of the body is not awaited
    finally:
        writer.close()
    assert backend.syncs == []


async def test_request_heads_over_aiohttp_limits_are_400_in_one_log_line(
    serve: Callable[..., Awaitable[Server]], caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve()
    caplog.set_level(logging.INFO)
    heads = [
        b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
    ]
    for head in heads:
        reader, writer = await _connect(server)
        writer.write(head)
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer
    bad = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(bad) == 3
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in bad)
    assert "Traceback" not in caplog.text
    assert "bad HTTP request from 127.0.0.1: Got more than 8190 bytes" in caplog.text
    assert "Too many headers" in caplog.text


# The connection cap


@pytest.mark.parametrize(
    ("setting", "soft", "cap"),
    [
        (1024, 20000, 1024),
        (1024, 512, 512 - FD_RESERVE),
        (1024, 300, 300 - FD_RESERVE),
        (1024, 260, MIN_CONNECTIONS),
        (10, 20000, 10),
    ],
)
def test_connection_cap_leaves_the_engine_a_reserve(setting: int, soft: int, cap: int) -> None:
    assert connection_cap(setting, soft) == cap


async def test_at_the_cap_the_least_recently_active_idle_connection_goes_first(
    serve: Callable[..., Awaitable[Server]], http: aiohttp.ClientSession
) -> None:
    server = await serve(max_connections=8)
    assert server.connection_cap == 8
    idle = [await _connect(server) for _ in range(5)]
    served = await _connect(server)
    assert await _get(served) == (200, b"ok")  # the most recently active of the six
    await _wait_for(lambda: server.connections == 6, "six connections")
    newer = [await _connect(server) for _ in range(6)]  # 12 > 8: four must go
    try:
        for reader, _ in idle[:4]:
            assert await _closed_after(reader, limit=2) < 2
        await _wait_for(lambda: server.connections == 8, "the cap")
        assert await _still_open(idle[4][0])
        assert await _get(served) == (200, b"ok")  # a served client kept its connection
        async with http.get(f"http://127.0.0.1:{server.port}/healthz") as response:
            assert response.status == 200  # a newcomer is served at the cap
        assert server.connections <= 8
    finally:
        for _, writer in [*idle, served, *newer]:
            writer.close()


async def test_at_the_cap_with_every_connection_busy_the_oldest_busy_one_goes(
    serve: Callable[..., Awaitable[Server]], http: aiohttp.ClientSession
) -> None:
    # Busy: inside a request, waiting for a body that never comes. A pile of
    # those must not lock out /healthz either.
    server = await serve(max_connections=8, body_timeout=30)
    head = (
        b"POST /hooks/generic HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n"
        b"X-Signature-256: sha256=00\r\n\r\n"
    )
    busy = []
    for _ in range(8):
        streams = await _connect(server)
        streams[1].write(head)
        busy.append(streams)
    await asyncio.sleep(0.3)  # let each request reach its handler
    try:
        async with http.get(f"http://127.0.0.1:{server.port}/healthz") as response:
            assert response.status == 200
        assert await _closed_after(busy[0][0], limit=2) < 2
        assert await _still_open(busy[-1][0])
    finally:
        for _, writer in busy:
            writer.close()


def test_running_out_of_descriptors_in_accept_is_one_line_and_recovers() -> None:
    # A server whose descriptor limit drops after it started (so the cap, taken
    # at start, is too high): accept fails with EMFILE. Without the guard asyncio
    # logs a traceback every second and nobody new gets in until an idle
    # connection leaves on its own.
    script = textwrap.dedent(
        """
        import asyncio, os, resource, sys
        from reconciler import logs
        from reconciler.server import ServerSettings, start

        class Backend:
            def live(self):
                return True

        async def main():
            logs.configure("info", json=True)
            server = await start(Backend(), ServerSettings(port=0))
            free = 24
            soft = len(os.listdir("/proc/self/fd")) + free
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            print(server.port, flush=True)
            await asyncio.sleep(30)

        asyncio.run(main())
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
        time.sleep(1.5)  # the child ran out of descriptors at least once
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200
        answered = time.monotonic() - started
        for sock in idle:
            sock.close()
    finally:
        child.terminate()
        _, stderr = child.communicate(timeout=10)
    assert answered < 5.0, f"/healthz took {answered:.2f}s while out of descriptors"
    lines = stderr.splitlines()
    assert "Traceback" not in stderr and "socket.accept() out of system resource" not in stderr
    accept = [line for line in lines if "cannot accept connections" in line]
    assert 1 <= len(accept) <= 2, stderr  # the first, and at most one summary
    assert "Too many open files" in accept[0]


# Rate limits


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 100  # saved up: never more than the burst
    assert [bucket.take() for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.5)]


async def test_hooks_past_their_rate_are_429_with_retry_after_then_accepted_again(
    serve: Callable[..., Awaitable[Server]],
    http: aiohttp.ClientSession,
    backend: MemoryBackend,
) -> None:
    server = await serve(hook_rate=1.0, hook_burst=3)
    url = f"http://127.0.0.1:{server.port}"
    body = b'{"push": 1}'
    signed = {"X-Signature-256": _sign(body)}
    statuses, retry = [], []
    for _ in range(5):
        async with http.post(f"{url}/hooks/generic", data=body, headers=signed) as response:
            statuses.append(response.status)
            retry.append(response.headers.get("Retry-After"))
            if response.status == 429:
                error = (await response.json())["error"]
    assert statuses == [202, 202, 202, 429, 429]
    assert retry[3:] == ["1", "1"]
    assert "at most 1 a second (bursts of 3); retry after 1s" in error
    assert backend.syncs == ["webhook generic"] * 3
    # unsigned callers are counted before their signature is checked, so a flood
    # of them cannot make the server hash megabytes
    async with http.post(f"{url}/hooks/github", data=body) as response:
        assert response.status == 429
    await asyncio.sleep(1.05)
    async with http.post(f"{url}/hooks/generic", data=body, headers=signed) as response:
        assert response.status == 202  # after Retry-After, a push is a sync again
    assert backend.syncs == ["webhook generic"] * 4
    # the other routes are not limited
    for _ in range(20):
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 200


async def test_sync_api_past_its_rate_is_429(
    serve: Callable[..., Awaitable[Server]],
    http: aiohttp.ClientSession,
    backend: MemoryBackend,
) -> None:
    server = await serve(sync_rate=0.5, sync_burst=2)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    statuses, retry = [], None
    for _ in range(4):
        url = f"http://127.0.0.1:{server.port}/api/v1/sync"
        async with http.post(url, headers=auth) as response:
            statuses.append(response.status)
            retry = response.headers.get("Retry-After")
    assert statuses == [202, 202, 429, 429]
    assert retry == "2"  # a token every 2 s
    assert len(backend.syncs) == 2


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_connections": 0}, "max_connections: expected an integer >= 1, got 0"),
        ({"header_timeout": 0.0}, "header_timeout: expected a number > 0, got 0.0"),
        ({"hook_rate": float("inf")}, "hook_rate: expected a number > 0, got inf"),
        ({"sync_burst": 0}, "sync_burst: expected an integer >= 1, got 0"),
    ],
)
def test_limits_refuse_bad_values(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        HttpLimits(**limits)


# One log line per kind per interval


def _record(name: str, msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeat_filter_lets_the_first_of_a_kind_through_then_one_per_interval() -> None:
    now = [0.0]
    repeats = RepeatFilter(10.0, clock=lambda: now[0])
    try:
        peer = "rejected request from %s"
        assert repeats.filter(_record("reconciler.server", peer, "1.2.3.4:1"))
        assert not repeats.filter(_record("reconciler.server", peer, "1.2.3.4:2"))
        # another template, level or logger is another kind
        assert repeats.filter(_record("reconciler.server", "other %s", "x"))
        assert repeats.filter(_record("reconciler.server", peer, "x", level=logging.ERROR))
        assert repeats.filter(_record("aiohttp.server", peer, "x"))
        # loggers nobody outside can drive are left alone
        for _ in range(3):
            assert repeats.filter(_record("reconciler.engine", peer, "x"))
        now[0] = 11.0
        # the window ended with one record counted: that one awaits its summary,
        # and so does this one
        assert not repeats.filter(_record("reconciler.server", peer, "1.2.3.4:3"))
    finally:
        repeats.close()


async def test_a_flood_of_bad_requests_is_one_line_and_one_summary(
    serve: Callable[..., Awaitable[Server]], http: aiohttp.ClientSession
) -> None:
    server = await serve(hook_burst=1000)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    # a window the 100 requests fit in even on a loaded machine (0.5 s did not)
    repeats = RepeatFilter(5)
    handler.addFilter(repeats)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    access = logging.getLogger("aiohttp.access")  # per request: the daemon keeps it quiet
    access_level = access.level
    access.setLevel(logging.WARNING)
    try:
        url = f"http://127.0.0.1:{server.port}"
        for _ in range(100):
            async with http.post(f"{url}/hooks/generic", data=b"{}") as response:
                assert response.status == 401
            reader, writer = await _connect(server)
            writer.write(b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
            await _closed_after(reader, limit=5)
            writer.close()
        lines = stream.getvalue().splitlines()
        assert len([line for line in lines if "rejected request" in line]) == 1
        assert len([line for line in lines if "bad HTTP request" in line]) == 1
        await _wait_for(
            lambda: stream.getvalue().count("similar messages suppressed") == 2,
            "the two summaries",
            seconds=12,
        )
        text = stream.getvalue()
        assert "99 similar messages suppressed in the last 5s" in text
        assert "Traceback" not in text
        assert len(text.splitlines()) <= 6, text  # the listening line at most besides
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        access.setLevel(access_level)
        repeats.close()
