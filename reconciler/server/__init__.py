"""The daemon's HTTP server: health probes, a read-only JSON API, a token-guarded
sync trigger and signed webhooks that ask the daemon to fetch the source now.

The server knows the daemon only through `Backend`, a handful of quick,
non-blocking methods answered from memory; it imports nothing else of ours but
its limits (`httplimits`) and the status page (`web`), so it sits beside the
daemon without a layer to point at. Nothing here is global: `build_app` wires one `Backend` and one
`ServerSettings` into an aiohttp application, and `start` binds it and returns a
`Server` to stop.

A module per part (their own layers contract in .importlinter):

    contract.py  Backend, ServerSettings, the error body, the server's logger
    api.py       the probes, the read-only API and its query parameters
    hooks.py     the sync API and the webhooks, their authentication, body reads
    app.py       the routes, the middleware (rate limits, JSON errors), start,
                 Server; it adds the status page's routes (reconciler.web, a
                 layer below, which reads the same Backend)

Routes:

    GET  /                                the status page (reconciler.web): HTML,
                                          ?q=&state=&kind=&sort=&order=&page=&size=
    GET  /live                            the page's live part (same query; ETag, 304)
    GET  /api/v1/page                     the page's data as JSON (same query)
    GET  /static/page.js, /static/page.css  the page's script and stylesheet
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

Every JSON response is `application/json`; every error is `{"error": "..."}`
(the status page's own routes answer a bad query with a 400 in their own type,
and carry its security headers: decisions 0134-0137).
Secrets never appear in responses, logs or the settings' repr.
"""

from __future__ import annotations

from reconciler.httplimits import HttpLimits
from reconciler.server.api import EVENTS_DEFAULT_LIMIT as EVENTS_DEFAULT_LIMIT
from reconciler.server.api import EVENTS_MAX_LIMIT as EVENTS_MAX_LIMIT
from reconciler.server.app import Server, build_app, start
from reconciler.server.contract import Backend, Leader, ServerSettings
from reconciler.server.contract import MiB as MiB

__all__ = ["Backend", "HttpLimits", "Leader", "Server", "ServerSettings", "build_app", "start"]
