"""The status page without a browser: escaping of hostile text, the security
headers, the query parameters and the ETag, served for real on 127.0.0.1.

The backend is a small in-memory stand-in (the daemon's own `page` is exercised
by tests/e2e/test_web_page.py and bench/page.py): the data a hostile repository
could put in front of the page, and nothing else.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest

from reconciler.server import ServerSettings, start
from reconciler.web import MAX_SIZE, BadQuery, PageQuery, parse

SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2)">'
ROOT = Path(__file__).resolve().parents[2]


class PageStandIn:
    """Status, a page of rows and events, each carrying markup."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = [
            {
                "id": f"File/{SCRIPT}",
                "kind": "File",
                "name": SCRIPT,
                "state": "Drifted",
                "lastTransition": 1_700_000_000.0,
                "lastError": f"failed: {IMG}",
                "attempts": 1,
                "createdByReconciler": True,
                "drift": [
                    {"field": "/content", "observed": "</pre>" + SCRIPT, "desired": "a & b"},
                    {"field": "/password", "sensitive": True},
                ],
                "instance": None,
            },
            {
                "id": "Directory/app",
                "kind": "Directory",
                "name": "app",
                "state": "InSync",
                "lastTransition": 1_700_000_001.0,
                "lastError": None,
                "attempts": 0,
                "createdByReconciler": True,
                "drift": None,
                "instance": "Bundle/web",
            },
        ]
        self.queries: list[PageQuery] = []

    def live(self) -> bool:
        return True

    def ready(self) -> tuple[bool, str]:
        return True, ""

    def status(self) -> dict[str, Any]:
        return {
            "source": {"url": "https://git.example/<b>repo</b>", "ref": "main", "path": "."},
            "revision": {"id": "3f2a9c1", "summary": f"commit {SCRIPT}"},
            "lastGoodRevision": "3f2a9c1",
            "lastFetch": {"at": 1_700_000_000.0, "ok": True, "lastSuccess": 1_700_000_000.0},
            "lastError": f"revision 9 rejected: {IMG}",
            "rejected": {
                "revision": "9e9e9e9",
                "at": 1_700_000_000.0,
                "errors": [f"x.yaml:1: {SCRIPT}"],
            },
            "resources": {"Drifted": 1, "InSync": 1},
            "eventLoop": {"lag": time.perf_counter()},  # changes at every call, not shown
        }

    async def page(self, query: PageQuery) -> dict[str, Any]:
        self.queries.append(query)
        rows = [r for r in self.rows if query.state is None or r["state"] == query.state]
        return {
            "total": len(self.rows),
            "matched": len(rows),
            "page": 1,
            "pages": 1,
            "size": query.size,
            "kinds": sorted({r["kind"] for r in self.rows}),
            "rows": rows,
        }

    def resources(self, kind: str | None) -> list[dict[str, Any]]:
        return self.rows

    def resource(self, kind: str, name: str) -> dict[str, Any] | None:
        return None

    async def events(self, **filters: Any) -> list[dict[str, Any]]:
        return [
            {
                "seq": 1,
                "at": 1_700_000_000.0,
                "id": f"File/{SCRIPT}",
                "from": "InSync",
                "to": "Drifted",
                "event": "drift_found",
                "reason": IMG,
                "instance": None,
            }
        ]

    def request_sync(self, reason: str) -> None:
        pass


@pytest.fixture
def backend() -> PageStandIn:
    return PageStandIn()


@pytest.fixture
async def client(backend: PageStandIn) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    server = await start(backend, ServerSettings(port=0))  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{server.port}"
    await server.stop()


async def _get(
    client: tuple[aiohttp.ClientSession, str], path: str, **headers: str
) -> tuple[int, str, Any]:
    session, base = client
    async with session.get(base + path, headers=headers) as response:
        return response.status, await response.text(), response.headers


class _Markup(HTMLParser):
    """What the page's markup holds: tags with their attributes, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parsed(body: str) -> _Markup:
    markup = _Markup()
    markup.feed(body)
    return markup


@pytest.mark.parametrize("path", ["/", "/live"])
async def test_hostile_text_is_shown_as_text(client: Any, path: str) -> None:
    status, body, _ = await _get(client, path)
    assert status == 200
    assert SCRIPT not in body and "<img" not in body and "<b>" not in body
    markup = _parsed(body)
    # the only scripts are the page's own file, and no tag carries a handler
    assert [a for t, a in markup.tags if t == "script"] == (
        [{"src": "/static/page.js", "defer": None}] if path == "/" else []
    )
    assert not [a for _, attrs in markup.tags for a in attrs if a.startswith("on") or a == "style"]
    assert not [t for t, _ in markup.tags if t in ("img", "b", "style", "iframe")]
    text = "".join(markup.text)
    for shown in (SCRIPT, IMG, "https://git.example/<b>repo</b>", "</pre>" + SCRIPT, "a & b"):
        if path == "/live" and "git.example" in shown:
            continue  # the source line is in the page's header, outside the live part
        assert shown in text, shown
    assert "(sensitive)" in text


async def test_the_page_is_read_only_and_shows_what_it_should(client: Any) -> None:
    _, body, _ = await _get(client, "/")
    markup = _parsed(body)
    forms = [attrs for tag, attrs in markup.tags if tag == "form"]
    assert forms == [{"id": "filter", "method": "get", "action": "/", "role": "search"}]
    landmarks = {tag for tag, _ in markup.tags} & {"header", "nav", "main", "footer"}
    assert landmarks == {"header", "nav", "main", "footer"}
    labelled = {attrs.get("for") for tag, attrs in markup.tags if tag == "label"}
    inputs = {attrs.get("id") for tag, attrs in markup.tags if tag in ("input", "select")}
    assert inputs <= labelled
    assert all(attrs.get("scope") in ("col", "row") for tag, attrs in markup.tags if tag == "th")
    text = " ".join("".join(markup.text).split())
    for expected in (
        "3f2a9c1",
        "Rejected revision 9e9e9e9",
        "1 Drifted",
        "2 in all",
        "drift_found",
    ):
        assert expected in text, expected


@pytest.mark.parametrize("path", ["/", "/live", "/api/v1/page", "/static/page.js", "/?size=0"])
async def test_every_answer_carries_the_security_headers(client: Any, path: str) -> None:
    _, _, headers = await _get(client, path)
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("?status=Drifted", "unknown query parameter(s) status"),
        ("?q=a&q=b", "more than once: q"),
        ("?size=0", f"size: expected an integer 1..{MAX_SIZE}"),
        ("?size=501", f"size: expected an integer 1..{MAX_SIZE}"),
        ("?page=0", "page: expected an integer"),
        ("?page=-1", "page: expected an integer"),
        ("?page=1e3", "page: expected an integer"),
        ("?page=99999999999", "page: expected an integer"),
        ("?state=Bogus", "state: expected one of"),
        ("?sort=name", "sort: expected one of"),
        ("?order=up", "order: expected asc or desc"),
        ("?q=" + "x" * 201, "q: expected at most 200 characters"),
    ],
)
async def test_a_bad_query_is_a_400_saying_what_was_expected(
    client: Any, backend: PageStandIn, query: str, says: str
) -> None:
    for path in ("/", "/live", "/api/v1/page"):
        status, body, headers = await _get(client, path + query)
        assert status == 400, (path, query)
        assert says in body.replace("&#39;", "'").replace("&amp;", "&"), (path, body)
    assert backend.queries == []
    _, body, headers = await _get(client, "/api/v1/page" + query)
    assert headers["Content-Type"].startswith("application/json")


async def test_the_empty_fields_of_a_submitted_form_mean_not_given(
    client: Any, backend: PageStandIn
) -> None:
    status, _, _ = await _get(client, "/?q=&state=&kind=&sort=id&order=asc&size=100")
    assert status == 200
    assert backend.queries == [PageQuery()]
    status, _body, _ = await _get(client, "/api/v1/page?state=InSync&sort=state&order=desc&page=3")
    assert status == 200
    assert backend.queries[-1] == PageQuery(state="InSync", sort="state", order="desc", page=3)


async def test_an_unchanged_state_is_a_304_without_a_body(
    client: Any, backend: PageStandIn
) -> None:
    for path in ("/live", "/api/v1/page", "/static/page.css"):
        status, body, headers = await _get(client, path)
        etag = headers["ETag"]
        status, body, _ = await _get(client, path, **{"If-None-Match": etag})
        assert (status, body) == (304, ""), path
    # the page carries its live part's ETag: the script's first look is a 304
    _, body, _ = await _get(client, "/")
    made_with = _parsed(body).tags
    main = next(attrs for tag, attrs in made_with if tag == "main")
    _, _, headers = await _get(client, "/live")
    assert main["data-etag"] == headers["ETag"]
    backend.rows[1]["state"] = "Failed"
    status, body, headers = await _get(client, "/live", **{"If-None-Match": etag})
    assert status == 200 and headers["ETag"] != etag


async def test_static_files_only_the_page_s_own(client: Any) -> None:
    status, body, headers = await _get(client, "/static/page.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert "/live" in body
    status, _, headers = await _get(client, "/static/..%2Fquery.py")
    assert status == 404


def test_a_query_s_links_parse_back_to_it() -> None:
    for query in (
        PageQuery(),
        PageQuery(
            q="a b&c", state="Drifted", kind="File", sort="error", order="desc", page=4, size=7
        ),
    ):
        link = query.params()
        assert parse(dict(parse_qsl(link[1:]))) == query
    with pytest.raises(BadQuery):
        parse({"size": "١٢"})  # digits of another script: not a page size


def test_the_wheel_ships_the_templates_and_static_files() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"]["reconciler"]
    package = ROOT / "reconciler"
    shipped = [
        p.relative_to(package).as_posix()
        for folder in ("web/templates", "web/static")
        for p in (package / folder).iterdir()
    ]
    assert shipped and all(any(fnmatch(name, g) for g in globs) for name in shipped), shipped
