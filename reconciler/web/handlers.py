"""The status page's routes: the page (`GET /`), the part of it the script
swaps in when the state changed (`GET /live`), the same data as JSON
(`GET /api/v1/page`) and the script and stylesheet (`GET /static/...`).

Every answer carries the page's security headers (a Content-Security-Policy
without inline script or style, nosniff, no referrer, no framing) and an ETag
of its body (of the data it is made of, for `/live`): the script polls `/live`
with If-None-Match every second, and an unchanged state is a 304 with no body,
not rendered (decision 0135).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable
from importlib import resources
from typing import Any, Final, Protocol

from aiohttp import web

from reconciler.web import render
from reconciler.web.query import BadQuery, PageQuery, parse
from reconciler.web.render import PageData

EVENTS_SHOWN: Final = 20
"""The latest events the page lists."""

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # always revalidated: the ETag makes that a 304 when nothing changed
    "Cache-Control": "no-cache",
}
_STATIC: Final = {"page.js": "text/javascript", "page.css": "text/css"}


class PageBackend(Protocol):
    """What the page reads of the daemon: the part of the server's `Backend`
    (which extends this; the server is a layer above) the page needs. Called on
    the event loop, so each answers from memory and never blocks."""

    def status(self) -> dict[str, Any]:
        """A JSON-able status document, already redacted by the daemon."""
        ...

    def page(self, query: PageQuery) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """One page of the status page's resource table: `total`, `matched`,
        `page` (clamped to `pages`), `pages`, `size`, `kinds` (every kind present)
        and `rows` (as the API's resources show them, with `drift`). May be a
        coroutine; answered from memory in one walk of the inventory."""
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


class PageHandlers:
    """The page's routes, bound to one backend."""

    def __init__(self, backend: PageBackend) -> None:
        self._backend = backend
        folder = resources.files("reconciler.web") / "static"
        # two small files, read once: served from memory with their ETag
        self._static = {name: (folder / name).read_bytes() for name in _STATIC}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/live", self.live),
            web.get("/api/v1/page", self.data),
            web.get("/static/{name}", self.static),
        ]

    async def _data(self, request: web.Request) -> PageData:
        query = parse(request.query, lambda key: request.query.getall(key, []))
        answer = self._backend.page(query)
        page = await answer if inspect.isawaitable(answer) else answer
        events = await self._backend.events(
            resource=None, kind=None, since=None, limit=EVENTS_SHOWN, instance=None
        )
        return PageData(query, self._backend.status(), page, events)

    async def index(self, request: web.Request) -> web.Response:
        try:
            data = await self._data(request)
        except BadQuery as exc:
            return _answer(request, render.problem(str(exc)).encode(), "text/html", status=400)
        return _answer(request, render.page(data).encode(), "text/html")

    async def live(self, request: web.Request) -> web.Response:
        try:
            data = await self._data(request)
        except BadQuery as exc:
            return _answer(request, str(exc).encode(), "text/plain", status=400)
        tag = data.live_etag()  # known before rendering: an unchanged part is not rendered
        if _matches(request.headers.get("If-None-Match"), tag):
            return web.Response(status=304, headers={**SECURITY_HEADERS, "ETag": tag})
        return _answer(request, render.live(data).encode(), "text/html", tag=tag)

    async def data(self, request: web.Request) -> web.Response:
        try:
            data = await self._data(request)
        except BadQuery as exc:
            return _answer(request, json.dumps({"error": str(exc)}).encode(), _JSON, status=400)
        return _answer(request, json.dumps(data.to_json()).encode(), _JSON)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            raise web.HTTPNotFound()
        return _answer(request, body, _STATIC[name])


_JSON: Final = "application/json"


def _answer(
    request: web.Request,
    body: bytes,
    content_type: str,
    *,
    status: int = 200,
    tag: str | None = None,
) -> web.Response:
    """`body` with the security headers and its ETag (`tag`, or a digest of the
    body); a 304 without a body when the client holds the same."""
    headers = dict(SECURITY_HEADERS)
    if status == 200:
        tag = tag or render.etag(body)
        headers["ETag"] = tag
        if _matches(request.headers.get("If-None-Match"), tag):
            return web.Response(status=304, headers=headers)
    return web.Response(
        body=body, status=status, content_type=content_type, charset="utf-8", headers=headers
    )


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return etag in tags or "*" in tags
