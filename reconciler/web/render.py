"""The status page's HTML, rendered on the server from the package's Jinja
templates with autoescaping on for every template: every string the page shows
(resource names, errors, revision summaries, drifted values) comes from a
repository that may be hostile, and autoescaping makes markup in any of them
text. Nothing from the daemon is marked safe; the one `Markup` is the live
part the same environment has just rendered (and escaped), put into the page.

`page` renders the whole document, `live` only what the script swaps in when
the state changed (the inside of `<main>`); both from the same `PageData`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from reconciler.web.query import ORDERS, SORTS, STATES, PageQuery

LIVE_FORMAT: Final = 1
"""Part of the live part's ETag: bump it when live.html changes, so a page made
by an older daemon does not keep its stale part after an upgrade."""
SHOWN_STATUS: Final = (
    "source",
    "revision",
    "lastGoodRevision",
    "lastFetch",
    "lastError",
    "rejected",
    "resources",
)
"""What the live part shows of the status document: only these make its ETag
(the event loop's lag, also in the status, changes at every look)."""
POLL_MS: Final = 1000
"""How often the script asks whether the state changed."""
SHOWN_CHARS: Final = 300
"""Characters of one drifted value or error shown; the API has the whole."""

COLUMNS: Final = (
    ("id", "Resource"),
    ("kind", "Kind"),
    ("state", "State"),
    ("transition", "Last transition"),
    ("error", "Last error"),
    ("instance", "Instance"),
)


@dataclass(frozen=True, slots=True)
class PageData:
    """What one page shows: the daemon's status, the page of resources (the
    `Backend.page` answer) and the latest events, for one query."""

    query: PageQuery
    status: dict[str, Any]
    page: dict[str, Any]
    events: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """What the page shows, as `/api/v1/page` serves it (of the status, only
        what the page shows: the rest is at /api/v1/status)."""
        shown = {key: self.status.get(key) for key in SHOWN_STATUS}
        return {"status": shown, "page": self.page, "events": self.events}

    def live_etag(self) -> str:
        """The ETag of the live part made from this data, without rendering it:
        the same data and query always render the same part, so a digest of
        them tells an unchanged part at the cost of one `json.dumps` (a third
        of a rendering)."""
        made_of = [LIVE_FORMAT, self.query.params(), self.to_json()]
        return etag(json.dumps(made_of, default=str).encode())


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _iso(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _shown(value: object) -> str:
    """A value as text, cut at SHOWN_CHARS: drifted content may be a whole file."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f"… ({len(text):,} chars)"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("reconciler.web", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, iso=_iso, shown=_shown)
    env.globals.update(COLUMNS=COLUMNS, STATES=STATES, SORTS=SORTS, ORDERS=ORDERS, POLL_MS=POLL_MS)
    return env


_ENV: Final = _environment()
"""Immutable after it is made (templates load once): shared, not a mutable singleton."""


def etag(body: bytes) -> str:
    """The ETag of an answer: a digest of its bytes, so equal answers match."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def page(data: PageData) -> str:
    """The whole document. It carries its live part's ETag, so the script's
    first look is a 304 when nothing changed since the page was made."""
    part = live(data)
    return _ENV.get_template("page.html").render(
        d=data,
        q=data.query,
        live_etag=data.live_etag(),
        # rendered just above by our own autoescaped template, not data
        live_part=Markup(part),
    )


def live(data: PageData) -> str:
    """The inside of `<main>`: what the script replaces when the state changed."""
    return _ENV.get_template("live.html").render(d=data, q=data.query)


def problem(message: str) -> str:
    """The page of a bad query: what was wrong, and a way back."""
    return _ENV.get_template("problem.html").render(message=message)
