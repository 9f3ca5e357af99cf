"""The daemon's status page: one read-only, server-rendered HTML page on the
daemon's listener, showing the source and revisions, counts by state, a page of
resources (filtered, sorted), the drift of the drifted ones and the latest
events, kept current by a small script that polls for changes.

No build step and nothing from elsewhere: Jinja templates (autoescaped) and a
script and stylesheet shipped in the package. Without JavaScript the page is a
complete snapshot: its filter, sort and pages are plain GET links and a form.

    query.py     the page's query parameters, parsed and bounded (PageQuery)
    render.py    the HTML, from templates/ (page, the live part, a bad query)
    handlers.py  the routes (/, /live, /api/v1/page, /static/...), their
                 security headers and ETags; PageBackend, what they read
    static/      page.js (live updates, filter as you type), page.css

The server (`reconciler.server.app`) adds the routes; the daemon answers
`PageBackend.page` from its inventory in memory (reconciler/daemon/views.py).
"""

from __future__ import annotations

from reconciler.web.handlers import CSP, SECURITY_HEADERS, PageBackend, PageHandlers
from reconciler.web.query import DEFAULT_SIZE, MAX_SIZE, BadQuery, PageQuery, parse

__all__ = [
    "CSP",
    "DEFAULT_SIZE",
    "MAX_SIZE",
    "SECURITY_HEADERS",
    "BadQuery",
    "PageBackend",
    "PageHandlers",
    "PageQuery",
    "parse",
]
