"""The server's read side: the health probes and the read-only JSON API
(status, resources, one resource, events), with the parsing of their query
parameters.

Event filters: `resource=Kind/name`, `kind=Kind`, `instance=Bundle/name`,
`since=<unix seconds, float>`, `limit=<1..1000>` (default 100); resources take
`kind` and `instance`. A malformed, repeated or unknown parameter is a 400.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from typing import Any, Final

from aiohttp import web

from reconciler.pacing import Pacer
from reconciler.server.contract import Backend, error

EVENTS_DEFAULT_LIMIT: Final = 100
EVENTS_MAX_LIMIT: Final = 1000

_LIST_SLICE = 256
"""Items of a long list encoded and sent per loop iteration (without a pacer); a
list this long or shorter is one body."""
_JSON = "application/json; charset=utf-8"
_PACED_SLICE = 64
"""Items of a long list encoded between two checks of the pacer."""


class ReadHandlers:
    """The probes and the read-only API, bound to one backend."""

    def __init__(self, backend: Backend, pacer: Pacer | None = None) -> None:
        self._backend = backend
        self._pacer = pacer

    # Probes: plain text, which is all a probe (or a human with curl) needs.

    async def healthz(self, request: web.Request) -> web.Response:
        if self._backend.live():
            return web.Response(text="ok")
        return web.Response(status=503, text="not live")

    async def readyz(self, request: web.Request) -> web.Response:
        ready, reason = self._backend.ready()
        if ready:  # a standby says so: "ready: standby"
            return web.Response(text="ready" if reason in ("", "ok") else f"ready: {reason}")
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
            return error(400, str(exc))
        answer = self._backend.resources(kind)
        found = await answer if inspect.isawaitable(answer) else answer
        if instance is not None:
            found = [r for r in found if r.get("instance") == instance]
        return await _json_list(request, "resources", found, self._pacer)

    async def resource(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        name = request.match_info["name"]
        found = self._backend.resource(kind, name)
        if found is None:
            return error(404, f"no resource {kind}/{name}")
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
            return error(400, str(exc))
        events = await self._backend.events(
            resource=resource, kind=kind, since=since, limit=limit, instance=instance
        )
        return await _json_list(request, "events", events, self._pacer)


async def _json_list(
    request: web.Request, key: str, items: list[dict[str, Any]], pacer: Pacer | None
) -> web.StreamResponse:
    """`{key: items}` as JSON; a long list is encoded a slice at a time, so
    12,000 resources never hold the loop for one body. Without a pacer each slice
    is written as it is made (chunked). With one, the slices share its budget with
    the daemon's other work (50 lists encoded at once would hold the loop as long
    as one 50 times longer) and the body goes out whole: every write is a send(),
    which lets go of the GIL, and the loop may then wait for busy provider threads
    to give it back."""
    if len(items) <= _LIST_SLICE:
        return web.json_response({key: items})
    opening = f'{{"{key}": ['.encode()
    if pacer is not None:
        body = bytearray(opening)
        for start in range(0, len(items), _PACED_SLICE):
            part = ", ".join(json.dumps(item) for item in items[start : start + _PACED_SLICE])
            body += (", " if start else "").encode() + part.encode()
            await pacer.pause()
        body += b"]}"
        return web.Response(body=bytes(body), headers={"Content-Type": _JSON})
    response = web.StreamResponse(headers={"Content-Type": _JSON})
    await response.prepare(request)
    await response.write(opening)
    for start in range(0, len(items), _LIST_SLICE):
        part = ", ".join(json.dumps(item) for item in items[start : start + _LIST_SLICE])
        await response.write((", " if start else "").encode() + part.encode())
        await asyncio.sleep(0)
    await response.write(b"]}")
    await response.write_eof()
    return response


class _BadRequest(Exception):
    """A query parameter with a bad value; its message becomes the 400 body."""


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
