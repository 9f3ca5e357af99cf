"""The server's write side: `POST /api/v1/sync` and the GitHub, GitLab and
generic webhooks, with their authentication and the bounded read of a body.

Each only asks the backend for a sync; coalescing a burst is the daemon's job.
The sync API takes `Authorization: Bearer <api_token>`; the hooks take
`webhook_secret`, as an HMAC-SHA256 of the raw body (GitHub's
`X-Hub-Signature-256`, the generic `X-Signature-256`) or as the token itself
(GitLab's `X-Gitlab-Token`), always compared in constant time. A missing and a
wrong signature get the same 401; an endpoint whose secret is not configured
answers 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Final

from aiohttp import web

from reconciler.server.contract import Backend, Leader, ServerSettings, error, log

# GitLab names push events this way; tag pushes change what a tag ref points at,
# so they can change the revision the daemon follows too.
_GITLAB_SYNC_EVENTS: Final = frozenset({"Push Hook", "Tag Push Hook"})
# One body for every authentication failure: distinguishing "missing" from
# "wrong" would help someone probing the endpoint and nobody else.
_UNAUTHORIZED_HOOK: Final = "unauthorized: missing or invalid webhook signature"
_UNAUTHORIZED_API: Final = "unauthorized: a valid 'Authorization: Bearer <token>' is required"


class WriteHandlers:
    """The sync API and the webhooks, bound to one backend and one set of settings.

    Writes: each guarded by a secret, each only asks the daemon for a sync.
    """

    def __init__(self, backend: Backend, settings: ServerSettings) -> None:
        self._backend = backend
        self._settings = settings
        self._secret = settings.webhook_secret
        self._token = settings.api_token.encode() if settings.api_token is not None else None

    async def sync(self, request: web.Request) -> web.Response:
        if self._token is None:
            return error(404, "sync API disabled: no api_token configured")
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        valid = scheme.lower() == "bearer" and hmac.compare_digest(
            _header_bytes(presented.strip()), self._token
        )
        if not valid:
            log.warning("sync API: rejected unauthenticated request from %s", request.remote)
            return web.json_response(
                {"error": _UNAUTHORIZED_API},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="reconciler"'},
            )
        leader = self._backend.request_sync(f"api request from {request.remote}")
        if leader is not None:
            return _forward(request, leader)
        return web.json_response({"accepted": True}, status=202)

    async def github(self, request: web.Request) -> web.Response:
        rejected = await self._verify_hmac(request, "X-Hub-Signature-256", "github")
        if rejected is not None:
            return rejected
        event = request.headers.get("X-GitHub-Event", "")
        if event == "ping":
            return web.json_response({"pong": True})
        if event == "push":
            return self._accept(request, "github push")
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
            return self._accept(request, f"gitlab {event.lower()}")
        return _ignored(f"GitLab event {_shown(event)} does not trigger a sync")

    async def generic(self, request: web.Request) -> web.Response:
        rejected = await self._verify_hmac(request, "X-Signature-256", "generic")
        if rejected is not None:
            return rejected
        return self._accept(request, "generic")

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

    def _accept(self, request: web.Request, what: str) -> web.Response:
        log.info("webhook %s: requesting a sync", what)
        leader = self._backend.request_sync(f"webhook {what}")
        if leader is not None:
            return _forward(request, leader)
        return web.json_response({"accepted": True}, status=202)


def _forward(request: web.Request, leader: Leader) -> web.Response:
    """A standby's answer to an authenticated write: 307 to the same path on the
    leader (the client sends it again, body and headers, and the leader checks
    them), or 503 naming the leader when it advertised no URL or none leads."""
    if leader.url:
        location = leader.url.rstrip("/") + request.path_qs
        return web.json_response(
            {"forwarded": location, "leader": leader.id},
            status=307,
            headers={"Location": location},
        )
    why = (
        "this daemon is a standby and no leader is elected now"
        if leader.id is None
        else f"this daemon is a standby; the leader {leader.id} advertises no URL"
    )
    return web.json_response({"error": why, "leader": leader.id}, status=503)


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
            response = error(408, f"request body not received within {timeout:g}s")
            response.force_close()  # the rest of the body is not worth waiting for
            return response
        except ConnectionResetError:  # the sender went away before its whole body
            log.warning("%s %s: client closed before the body ended", request.method, request.path)
            response = error(400, "connection closed before the request body ended")
            response.force_close()
            return response
    return error(413, f"request body too large: at most {limit} bytes accepted")


def _header_bytes(value: str) -> bytes:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape; this undoes it
    # exactly, so any byte sequence compares (and fails) without raising.
    return value.encode("utf-8", "surrogateescape")


def _hooks_disabled() -> web.Response:
    return error(404, "webhooks disabled: no webhook_secret configured")


def _reject_hook(request: web.Request, source: str) -> web.Response:
    log.warning("webhook %s: rejected request from %s: bad signature", source, request.remote)
    return error(401, _UNAUTHORIZED_HOOK)


def _ignored(note: str) -> web.Response:
    return web.json_response({"ignored": True, "note": note}, status=202)


def _shown(value: str) -> str:
    """An unsigned header value, quoted and cut short, fit to echo in a note."""
    return repr(value[:64]) if value else "(none)"
