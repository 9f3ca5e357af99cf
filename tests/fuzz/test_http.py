"""Generated HTTP requests against a real daemon's hook and API handlers.

One real `reconciler run` process (tests/e2e/daemon_harness.py, local mode, with
an API token and a webhook secret) receives requests written byte by byte on a
raw socket: random methods, paths (every route, variants and garbage), query
strings, headers (Authorization with the right, a wrong or a mangled token,
signature headers with a right or a wrong HMAC, event headers, content types,
Content-Length that matches, lies or is not a number, chunked bodies) and
bodies. Properties: every answer is below 500; the answer never holds the token
or the secret; the daemon stays healthy; its log holds no traceback and no
secret.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.e2e.daemon_harness import (
    API_TOKEN,
    WEBHOOK_SECRET,
    DaemonProcess,
    Daemons,
    file_doc,
    hmac_signature,
)
from tests.fuzz.profiles import SCALE, examples

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(300 * SCALE, method="thread")]

WAIT = 1.0
"""Seconds to wait for an answer before closing our side (see `send`)."""

ROUTES = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/status",
    "/api/v1/resources",
    "/api/v1/resources/File/app",
    "/api/v1/resources/File",
    "/api/v1/events",
    "/api/v1/sync",
    "/hooks/github",
    "/hooks/gitlab",
    "/hooks/generic",
    "/hooks/",
    "/",
    "/api/v1/resources/%00/%ff",
    "/api/v1/resources/File/..%2f..%2fetc",
    "//api//v1//status",
    "/api/v1/status/",
    "*",
    "http://127.0.0.1/healthz",
]
_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "-1", "0", "1000", "1e999", "nan", "File/app", "File", "10m", "\x00"]),
)
_HEADER_TEXT = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)


def _query(pairs: list[tuple[str, str]], raw: bool) -> str:
    if not pairs:
        return ""
    if raw:
        return "?" + "&".join(f"{k}={v}" for k, v in pairs)
    from urllib.parse import urlencode

    return "?" + urlencode(pairs)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(
        st.one_of(
            st.sampled_from(["GET", "POST", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
            st.sampled_from(["GET", "POST"]),
            st.sampled_from(["PATCH", "BREW", "get", "G T", "POST\x00", ""]),
        )
    )
    path = draw(
        st.one_of(
            st.sampled_from(ROUTES[:12]),  # the real routes, most of the time
            st.sampled_from(ROUTES[:12]),
            st.sampled_from(ROUTES[:12]),
            st.sampled_from(ROUTES),
            st.sampled_from(ROUTES).map(lambda r: r + "/x"),
            st.text(max_size=30).map(lambda t: "/" + t),
            st.integers(min_value=1, max_value=12_000).map(lambda n: "/" + "a" * n),
        )
    )
    keys = st.sampled_from(["limit", "since", "resource", "kind", "x", "limit", ""])
    pairs = draw(st.lists(st.tuples(keys, _TEXT), max_size=4))
    target = path + _query(pairs, draw(st.booleans()))
    body = draw(
        st.one_of(
            st.binary(max_size=200),
            st.just(b'{"ref": "refs/heads/main"}'),
            st.builds(lambda v: json.dumps(v).encode(), st.dictionaries(st.text(), st.text())),
        )
    )
    headers: list[tuple[str, str]] = [("Host", "127.0.0.1")]
    token = draw(
        st.sampled_from(
            [API_TOKEN, API_TOKEN + "x", API_TOKEN[:-1], API_TOKEN.upper(), "", WEBHOOK_SECRET]
        )
    )
    good_sig = hmac_signature(WEBHOOK_SECRET, body)
    optional = {
        "Authorization": st.sampled_from(
            [f"Bearer {token}", f"bearer {token}", f"Basic {token}", token, "Bearer"]
        ),
        "X-Hub-Signature-256": st.sampled_from(
            [good_sig, "sha256=" + "0" * 64, "sha256=", "md5=x"]
        ),
        "X-Signature-256": st.sampled_from([good_sig, "sha256=zz", good_sig.upper()]),
        "X-Gitlab-Token": st.sampled_from([WEBHOOK_SECRET, WEBHOOK_SECRET + " ", "wrong", ""]),
        "X-GitHub-Event": st.sampled_from(["push", "ping", "issues", ""]),
        "X-Gitlab-Event": st.sampled_from(["Push Hook", "Tag Push Hook", "Note Hook"]),
        "Content-Type": st.one_of(
            st.sampled_from(
                ["application/json", "application/x-www-form-urlencoded", "text/plain"]
            ),
            _HEADER_TEXT,
        ),
        "X-Random": _HEADER_TEXT,  # may hold CR, LF or NUL: a malformed head
    }
    names = st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=5)
    for name in draw(names):
        headers.append((name, draw(optional[name])))
    framing = draw(st.sampled_from(["length", "length", "lie", "none", "chunked", "bad-length"]))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "lie":
        headers.append(("Content-Length", str(draw(st.sampled_from([0, 1, 10**6, 2**63])))))
    elif framing == "bad-length":
        headers.append(("Content-Length", draw(st.sampled_from(["-1", "abc", "1, 2", " 3"]))))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        if draw(st.booleans()):
            body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    headers.append(("Connection", "close"))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + body


def send(port: int, request: bytes) -> bytes:
    """Write the request and read the whole answer (`Connection: close`). A server
    still waiting for a body it was promised (a Content-Length over the body, an
    unterminated chunked body) is told there is no more by closing our side; an
    answer that still does not come is a hang."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
        conn.sendall(request)
        chunks: list[bytes] = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            conn.shutdown(socket.SHUT_WR)
            try:
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
            except TimeoutError:
                raise AssertionError(f"no answer in {2 * WAIT} s to {request[:300]!r}") from None
    return b"".join(chunks)


def _record(line: str) -> dict[str, str]:
    try:
        record: dict[str, str] = json.loads(line)
    except ValueError:  # not a log record: kept whole, so a traceback in it still counts
        return {"line": line}
    return record


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("http-fuzz")
    root, config = base / "root", base / "config"
    root.mkdir()
    config.mkdir()
    (config / "app.yaml").write_text(file_doc("app", root / "app.conf", "port = 8080\n"))
    with Daemons(base / "daemons") as daemons:
        yield daemons.start(config, root=root)


def test_requests(daemon: DaemonProcess) -> None:
    statuses: dict[int, int] = {}

    @examples(500, deadline=15)
    @given(request=requests())
    def answer(request: bytes) -> None:
        reply = send(daemon.port, request)
        assert API_TOKEN.encode() not in reply and WEBHOOK_SECRET.encode() not in reply
        if not reply:
            return  # closed without an answer (a request line it would not read)
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1."), reply[:200]
        status = int(status_line.split()[1])
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, reply[:500]

    answer()
    assert daemon.running()
    assert daemon.request("GET", "/healthz").status == 200
    tracebacks = [
        record
        for record in map(_record, daemon.logs().splitlines())
        if "Traceback" in json.dumps(record)
        # known: a client gone mid-body is logged with a traceback
        # (tests/fuzz/test_found.py, xfail until fixed); any other one fails here
        and not record.get("exc", "").endswith("ConnectionResetError: Connection lost")
    ]
    assert not tracebacks, tracebacks[:3]
    daemon.assert_no_secrets()
    print(f"answers by status: {dict(sorted(statuses.items()))}")
    assert any(s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses), statuses
