"""A small real REST server for the HttpObject tests and benchmark.

aiohttp on 127.0.0.1 (an ephemeral port), in a thread of the test process
(`ApiServer`, a context manager) or in a process of its own (`ApiProcess`, so
a benchmark's server does not share the GIL with the engine it measures):

- objects in memory, by path: GET (404 when absent), PUT (create or replace),
  PATCH (a JSON merge patch, RFC 7396), DELETE (204, or 404), POST to a
  collection (the object goes to `<collection>/<body[id_field]>`, 409 if it
  exists); GET of `/` answers `{"ok": true}` (what a ping reads);
- fields added by the server to every object: `uid`, `createdAt`, `updatedAt`;
- a bearer token it requires (401 without it), TLS with a given certificate;
- told to misbehave: answer the next requests with a status (429 with
  Retry-After, 5xx, 400 echoing the request's headers and body), answer slowly;
- counts of requests by method, and the last requests' headers and bodies.

`make_cert` writes a self-signed certificate for 127.0.0.1 with the openssl CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class Rule:
    """Answer the next `times` requests (of `method`, if given) with `status`."""

    status: int
    times: int
    method: str | None = None
    retry_after: str | None = None
    echo: bool = False


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class _State:
    token: str | None = None
    id_field: str = "name"
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    seen: list[Seen] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    delay: float = 0.0
    active: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _json(status: int, data: Any) -> web.Response:
    return web.json_response(data, status=status)


def _stamp(stored: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    old = stored or {}
    return {
        **body,
        "uid": old.get("uid", str(uuid.uuid4())),
        "createdAt": old.get("createdAt", now),
        "updatedAt": f"{now}.{time.monotonic_ns()}",
    }


def make_app(state: _State) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        with state.lock:
            state.active += 1
            state.peak = max(state.peak, state.active)
        try:
            return await answer(request)
        finally:
            with state.lock:
                state.active -= 1

    async def answer(request: web.Request) -> web.StreamResponse:
        data = await request.read()
        method = request.method
        path = "/" + request.match_info["tail"].strip("/")
        with state.lock:
            state.counts[method] += 1
            state.seen.append(Seen(method, path, dict(request.headers), data))
            del state.seen[:-200]
            rule = next((r for r in state.rules if r.method is None or r.method == method), None)
            if rule is not None:
                rule.times -= 1
                if rule.times <= 0:
                    state.rules.remove(rule)
            delay = state.delay
        if delay:
            await asyncio.sleep(delay)
        if state.token is not None and request.headers.get("Authorization") != (
            f"Bearer {state.token}"
        ):
            return _json(401, {"error": "unauthorized"})
        if rule is not None:
            headers = {"Retry-After": rule.retry_after} if rule.retry_after else {}
            if rule.echo:
                text = json.dumps(
                    {
                        "error": "bad request",
                        "headers": dict(request.headers),
                        "body": data.decode(),
                    }
                )
            else:
                text = json.dumps({"error": f"told to answer {rule.status}"})
            return web.Response(
                status=rule.status, text=text, headers=headers, content_type="application/json"
            )
        if path == "/" and method == "GET":
            return _json(200, {"ok": True})
        body: dict[str, Any] = {}
        if method in ("PUT", "PATCH", "POST"):
            try:
                body = json.loads(data)
            except ValueError:
                return _json(400, {"error": "not JSON"})
            if not isinstance(body, dict):
                return _json(400, {"error": "expected a JSON object"})
        with state.lock:
            stored = state.objects.get(path)
            if method == "GET":
                return _json(200, stored) if stored is not None else _json(404, {"error": "none"})
            if method == "PUT":
                state.objects[path] = _stamp(stored, body)
                return _json(200 if stored else 201, state.objects[path])
            if method == "PATCH":
                if stored is None:
                    return _json(404, {"error": "none"})
                state.objects[path] = _stamp(stored, merge_patch(stored, body))
                return _json(200, state.objects[path])
            if method == "DELETE":
                if stored is None:
                    return _json(404, {"error": "none"})
                del state.objects[path]
                return web.Response(status=204)
            if method == "POST":
                key = body.get(state.id_field)
                if not isinstance(key, str) or not key:
                    return _json(400, {"error": f"expected {state.id_field} in the body"})
                target = f"{path.rstrip('/')}/{key}"
                if target in state.objects:
                    return _json(409, {"error": "exists"})
                state.objects[target] = _stamp(None, body)
                return _json(201, state.objects[target])
        return _json(405, {"error": "method"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class ApiServer:
    """The server in a thread of this process; use it as a context manager."""

    def __init__(
        self,
        *,
        token: str | None = None,
        cert: tuple[Path, Path] | None = None,
        id_field: str = "name",
    ) -> None:
        self.state = _State(token=token, id_field=id_field)
        self._cert = cert
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="api server", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        scheme = "https" if self._cert else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def objects(self) -> dict[str, dict[str, Any]]:
        return self.state.objects

    @property
    def counts(self) -> Counter[str]:
        return self.state.counts

    @property
    def writes(self) -> int:
        return sum(self.state.counts[m] for m in ("PUT", "POST", "PATCH", "DELETE"))

    @property
    def peak(self) -> int:
        """The most requests the server was answering at once."""
        return self.state.peak

    @property
    def seen(self) -> list[Seen]:
        return self.state.seen

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        retry_after: str | None = None,
        echo: bool = False,
    ) -> None:
        with self.state.lock:
            self.state.rules.append(Rule(status, times, method, retry_after, echo))

    def slow(self, seconds: float) -> None:
        self.state.delay = seconds

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # shown by __enter__ in the test's thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(make_app(self.state), access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        context = None
        if self._cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self._cert[0]), str(self._cert[1]))
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> ApiServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the API server did not start")
        if self._error is not None:
            raise RuntimeError("the API server did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class ApiProcess:
    """The server in a process of its own (`python -m tests.httpserver`): for a
    benchmark, and for TLS tests (asyncio leaves the socket of a refused
    handshake to the garbage collector, whose ResourceWarning would fail a test)."""

    def __init__(self, *, token: str | None = None, cert: tuple[Path, Path] | None = None) -> None:
        argv = [sys.executable, "-m", "tests.httpserver"]
        if token is not None:
            argv += ["--token", token]
        if cert is not None:
            argv += ["--cert", str(cert[0]), "--key", str(cert[1])]
        root = Path(__file__).resolve().parent.parent
        self._proc = subprocess.Popen(
            argv, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            self.close()
            raise RuntimeError(f"the API server did not start: {line}")
        self.port = int(line[1])
        self.base_url = f"{'https' if cert else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()  # the server stops when its stdin closes
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> ApiProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for 127.0.0.1, valid for a day."""
    cert, key = directory / "server.pem", directory / "server.key"
    from tests.system import ensure_debian  # only the tests make certificates

    openssl = ensure_debian("openssl", "openssl")  # a slim image may lack it
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--token")
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    args = parser.parse_args()
    cert = (args.cert, args.key) if args.cert else None
    with ApiServer(token=args.token, cert=cert) as server:
        print("READY", server.port, flush=True)
        sys.stdin.read()  # until the parent closes it (or goes away)


if __name__ == "__main__":
    _main()
