"""The HTTP server, served for real on 127.0.0.1 and called with a real client.

The backend is a small in-memory stand-in: it is not what is under test, only the
data the routes serve and the record of what the server asked of the daemon.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from reconciler.server import Backend, ServerSettings, start

SECRET = b"whsec-9f8e7d6c5b4a-never-show-me"
TOKEN = "apitok-0a1b2c3d4e5f-never-show-me"
MiB = 1024 * 1024


class MemoryBackend:
    """The daemon side of the contract, held in lists and records calls."""

    def __init__(self) -> None:
        self.is_live = True
        self.readiness: tuple[bool, str] = (True, "")
        self.crash = False
        self.syncs: list[str] = []
        self.event_queries: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = [
            {"kind": "Directory", "name": "app-dir", "state": "InSync"},
            {"kind": "File", "name": "app-config", "state": "Drifted"},
            {"kind": "File", "name": "motd", "state": "InSync", "instance": "Bundle/x"},
        ]
        self.history: list[dict[str, Any]] = [
            {"time": 100.0 + i, "resource": f"File/f{i % 3}", "kind": "File", "event": "x"}
            for i in range(150)
        ]

    def live(self) -> bool:
        return self.is_live

    def ready(self) -> tuple[bool, str]:
        return self.readiness

    def status(self) -> dict[str, Any]:
        if self.crash:
            raise RuntimeError("store went away")
        return {"revision": "3f2a9c1", "resources": len(self.items), "source": "redacted"}

    def resources(self, kind: str | None) -> list[dict[str, Any]]:
        return [item for item in self.items if kind is None or item["kind"] == kind]

    def resource(self, kind: str, name: str) -> dict[str, Any] | None:
        for item in self.items:
            if item["kind"] == kind and item["name"] == name:
                return item
        return None

    async def events(
        self,
        *,
        resource: str | None,
        kind: str | None,
        since: float | None,
        limit: int,
        instance: str | None,
    ) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"resource": resource, "kind": kind, "since": since}
        query["limit"] = limit
        if instance is not None:
            query["instance"] = instance
        self.event_queries.append(query)
        found = [
            event
            for event in self.history
            if (resource is None or event["resource"] == resource)
            and (kind is None or event["kind"] == kind)
            and (since is None or event["time"] >= since)
            and (instance is None or event.get("instance") == instance)
        ]
        return found[-limit:]

    def request_sync(self, reason: str) -> None:
        self.syncs.append(reason)


def _conforms(backend: Backend) -> Backend:
    # Checked by mypy: the stand-in really implements the Protocol.
    return backend


Serve = Callable[..., Awaitable[str]]


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
async def serve(backend: MemoryBackend) -> AsyncIterator[Serve]:
    """Start a server on an ephemeral port with the given settings; stop it after."""
    servers = []

    async def _serve(**settings: Any) -> str:
        server = await start(_conforms(backend), ServerSettings(port=0, **settings))
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield _serve
    for server in servers:
        await server.stop()


@pytest.fixture
async def url(serve: Serve) -> str:
    return await serve(webhook_secret=SECRET, api_token=TOKEN)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def _json(response: aiohttp.ClientResponse) -> Any:
    assert response.content_type == "application/json"
    return await response.json()


def _sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# Probes


async def test_healthz_ok_while_live(url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{url}/healthz") as response:
        assert response.status == 200
        assert await response.text() == "ok"


async def test_healthz_503_when_loop_not_live(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    backend.is_live = False
    async with http.get(f"{url}/healthz") as response:
        assert response.status == 503


async def test_readyz_ready(url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{url}/readyz") as response:
        assert response.status == 200
        assert await response.text() == "ready"


async def test_readyz_503_with_reason(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    backend.readiness = (False, "no revision loaded yet")
    async with http.get(f"{url}/readyz") as response:
        assert response.status == 503
        assert await response.text() == "not ready: no revision loaded yet"


# Read-only API


async def test_status(url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{url}/api/v1/status") as response:
        assert response.status == 200
        assert await _json(response) == {
            "revision": "3f2a9c1",
            "resources": 3,
            "source": "redacted",
        }


async def test_resources_all_and_by_kind(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    async with http.get(f"{url}/api/v1/resources") as response:
        assert response.status == 200
        assert (await _json(response))["resources"] == backend.items
    async with http.get(f"{url}/api/v1/resources", params={"kind": "File"}) as response:
        assert response.status == 200
        names = [item["name"] for item in (await _json(response))["resources"]]
        assert names == ["app-config", "motd"]
    async with http.get(f"{url}/api/v1/resources", params={"instance": "Bundle/x"}) as response:
        assert response.status == 200
        names = [item["name"] for item in (await _json(response))["resources"]]
        assert names == ["motd"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("kind=", "kind: expected a value"),
        ("kinds=File", "unknown query parameter(s) kinds"),
        ("instance=x", "instance: expected Kind/name, got 'x'"),
        ("kind=File&kind=Directory", "given more than once: kind"),
    ],
)
async def test_resources_bad_query(
    url: str, http: aiohttp.ClientSession, query: str, message: str
) -> None:
    async with http.get(f"{url}/api/v1/resources?{query}") as response:
        assert response.status == 400
        assert message in (await _json(response))["error"]


async def test_one_resource(url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{url}/api/v1/resources/File/app-config") as response:
        assert response.status == 200
        assert (await _json(response))["state"] == "Drifted"


async def test_unknown_resource_is_json_404(url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{url}/api/v1/resources/File/nope") as response:
        assert response.status == 404
        assert await _json(response) == {"error": "no resource File/nope"}


async def test_events_default_limit(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    async with http.get(f"{url}/api/v1/events") as response:
        assert response.status == 200
        events = (await _json(response))["events"]
    assert len(events) == 100
    assert events == backend.history[-100:]
    assert backend.event_queries == [{"resource": None, "kind": None, "since": None, "limit": 100}]


async def test_events_filters_reach_the_backend(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    params = {"resource": "File/f1", "kind": "File", "since": "200.5", "limit": "1000"}
    async with http.get(f"{url}/api/v1/events", params=params) as response:
        assert response.status == 200
        events = (await _json(response))["events"]
    assert backend.event_queries == [
        {"resource": "File/f1", "kind": "File", "since": 200.5, "limit": 1000}
    ]
    assert events
    assert all(event["resource"] == "File/f1" and event["time"] >= 200.5 for event in events)


async def test_events_filter_by_instance_reaches_the_backend(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    backend.history[-1]["instance"] = "Bundle/team-a-web"
    params = {"instance": "Bundle/team-a-web"}
    async with http.get(f"{url}/api/v1/events", params=params) as response:
        assert response.status == 200
        events = (await _json(response))["events"]
    assert backend.event_queries == [
        {
            "resource": None,
            "kind": None,
            "since": None,
            "limit": 100,
            "instance": "Bundle/team-a-web",
        }
    ]
    assert events == [backend.history[-1]]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit: expected an integer 1..1000, got '0'"),
        ("limit=1001", "limit: expected an integer 1..1000, got '1001'"),
        ("limit=-5", "limit: expected an integer 1..1000"),
        ("limit=ten", "limit: expected an integer 1..1000, got 'ten'"),
        ("limit=2.5", "limit: expected an integer"),
        ("since=yesterday", "since: expected unix seconds (a number), got 'yesterday'"),
        ("since=nan", "since: expected finite unix seconds >= 0"),
        ("since=inf", "since: expected finite unix seconds >= 0"),
        ("since=-1", "since: expected finite unix seconds >= 0"),
        ("resource=app-config", "resource: expected Kind/name, got 'app-config'"),
        ("resource=File/", "resource: expected Kind/name"),
        ("resource=/app-config", "resource: expected Kind/name"),
        ("kind=", "kind: expected a value"),
        ("instance=team-a", "instance: expected Kind/name, got 'team-a'"),
        ("instance=", "instance: expected a value"),
        ("limt=5", "unknown query parameter(s) limt"),
        ("limit=5&limit=6", "given more than once: limit"),
    ],
)
async def test_events_bad_parameters_are_400(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend, query: str, message: str
) -> None:
    async with http.get(f"{url}/api/v1/events?{query}") as response:
        assert response.status == 400
        assert message in (await _json(response))["error"]
    assert backend.event_queries == []


async def test_unknown_route_and_wrong_method_are_json(
    url: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{url}/api/v2/status") as response:
        assert response.status == 404
        assert await _json(response) == {"error": "not found"}
    async with http.get(f"{url}/hooks/github") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert await _json(response) == {"error": "method not allowed"}


async def test_backend_error_is_json_500_and_logged(
    url: str,
    http: aiohttp.ClientSession,
    backend: MemoryBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend.crash = True
    async with http.get(f"{url}/api/v1/status") as response:
        assert response.status == 500
        assert await _json(response) == {"error": "internal error"}
    assert "store went away" in caplog.text


# Sync API


async def test_sync_with_token(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.post(f"{url}/api/v1/sync", headers=headers) as response:
        assert response.status == 202
        assert await _json(response) == {"accepted": True}
    assert len(backend.syncs) == 1
    assert backend.syncs[0].startswith("api request")


async def test_sync_scheme_is_case_insensitive(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    headers = {"Authorization": f"bearer {TOKEN}"}
    async with http.post(f"{url}/api/v1/sync", headers=headers) as response:
        assert response.status == 202
    assert len(backend.syncs) == 1


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer ünïcödé",
    ],
)
async def test_sync_without_valid_token_is_401(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with http.post(f"{url}/api/v1/sync", headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "unauthorized" in (await _json(response))["error"]
    assert backend.syncs == []


async def test_sync_disabled_without_api_token(
    serve: Serve, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    url = await serve(webhook_secret=SECRET)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.post(f"{url}/api/v1/sync", headers=headers) as response:
        assert response.status == 404
        assert await _json(response) == {"error": "sync API disabled: no api_token configured"}
    assert backend.syncs == []


# GitHub


async def test_github_push_requests_sync(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    body = b'{"ref": "refs/heads/main", "after": "3f2a9c1"}'
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": _sign(body)}
    async with http.post(f"{url}/hooks/github", data=body, headers=headers) as response:
        assert response.status == 202
        assert await _json(response) == {"accepted": True}
    assert backend.syncs == ["webhook github push"]


async def test_github_signature_hex_case_does_not_matter(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    body = b"{}"
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": _sign(body).upper()}
    async with http.post(f"{url}/hooks/github", data=body, headers=headers) as response:
        assert response.status == 202
    assert len(backend.syncs) == 1


async def test_github_ping_after_verification(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    body = b'{"zen": "Keep it logically awesome."}'
    headers = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": _sign(body)}
    async with http.post(f"{url}/hooks/github", data=body, headers=headers) as response:
        assert response.status == 200
        assert await _json(response) == {"pong": True}
    headers["X-Hub-Signature-256"] = _sign(body, b"another secret")
    async with http.post(f"{url}/hooks/github", data=body, headers=headers) as response:
        assert response.status == 401
    assert backend.syncs == []


async def test_github_other_event_is_ignored(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    body = b'{"action": "opened"}'
    headers = {"X-GitHub-Event": "issues", "X-Hub-Signature-256": _sign(body)}
    async with http.post(f"{url}/hooks/github", data=body, headers=headers) as response:
        assert response.status == 202
        payload = await _json(response)
    assert payload["ignored"] is True
    assert "'issues' does not trigger a sync" in payload["note"]
    assert backend.syncs == []


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "sha256=",
        "sha256=deadbeef",
        "sha1=" + hmac.new(SECRET, b'{"ref": "x"}', hashlib.sha1).hexdigest(),
        # A signature of the body with the wrong key, and one of another body.
        "sha256=" + hmac.new(b"wrong", b'{"ref": "x"}', hashlib.sha256).hexdigest(),
        "sha256=" + hmac.new(SECRET, b'{"ref": "y"}', hashlib.sha256).hexdigest(),
        # The bare hex without its "sha256=" prefix.
        hmac.new(SECRET, b'{"ref": "x"}', hashlib.sha256).hexdigest(),
    ],
)
async def test_github_missing_or_bad_signature_is_401(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend, signature: str | None
) -> None:
    headers = {"X-GitHub-Event": "push"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    async with http.post(f"{url}/hooks/github", data=b'{"ref": "x"}', headers=headers) as response:
        assert response.status == 401
        # One body for every failure: it must not say which part was wrong.
        assert await _json(response) == {
            "error": "unauthorized: missing or invalid webhook signature"
        }
    assert backend.syncs == []


# GitLab


@pytest.mark.parametrize("event", ["Push Hook", "Tag Push Hook"])
async def test_gitlab_push_requests_sync(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend, event: str
) -> None:
    headers = {"X-Gitlab-Event": event, "X-Gitlab-Token": SECRET.decode()}
    async with http.post(f"{url}/hooks/gitlab", data=b"{}", headers=headers) as response:
        assert response.status == 202
        assert await _json(response) == {"accepted": True}
    assert backend.syncs == [f"webhook gitlab {event.lower()}"]


async def test_gitlab_other_event_is_ignored(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    headers = {"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": SECRET.decode()}
    async with http.post(f"{url}/hooks/gitlab", data=b"{}", headers=headers) as response:
        assert response.status == 202
        assert (await _json(response))["ignored"] is True
    assert backend.syncs == []


@pytest.mark.parametrize(
    "token", [None, "", "wrong", SECRET.decode() + "x", SECRET.decode()[:-1], "ünïcödé"]
)
async def test_gitlab_missing_or_wrong_token_is_401(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend, token: str | None
) -> None:
    headers = {"X-Gitlab-Event": "Push Hook"}
    if token is not None:
        headers["X-Gitlab-Token"] = token
    async with http.post(f"{url}/hooks/gitlab", data=b"{}", headers=headers) as response:
        assert response.status == 401
        assert await _json(response) == {
            "error": "unauthorized: missing or invalid webhook signature"
        }
    assert backend.syncs == []


# Generic


async def test_generic_valid_signature_requests_sync(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    body = b"anything at all: the body is not interpreted"
    headers = {"X-Signature-256": _sign(body)}
    async with http.post(f"{url}/hooks/generic", data=body, headers=headers) as response:
        assert response.status == 202
        assert await _json(response) == {"accepted": True}
    assert backend.syncs == ["webhook generic"]


@pytest.mark.parametrize("signature", [None, "sha256=00", _sign(b"other body")])
async def test_generic_bad_signature_is_401(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend, signature: str | None
) -> None:
    headers = {} if signature is None else {"X-Signature-256": signature}
    async with http.post(f"{url}/hooks/generic", data=b"body", headers=headers) as response:
        assert response.status == 401
        assert "unauthorized" in (await _json(response))["error"]
    assert backend.syncs == []


async def test_generic_empty_body_can_be_signed(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    headers = {"X-Signature-256": _sign(b"")}
    async with http.post(f"{url}/hooks/generic", headers=headers) as response:
        assert response.status == 202
    assert backend.syncs == ["webhook generic"]


# Webhooks in general


@pytest.mark.parametrize(
    ("hook", "headers"),
    [
        ("github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": _sign(b"{}")}),
        ("gitlab", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.decode()}),
        ("generic", {"X-Signature-256": _sign(b"{}")}),
    ],
)
async def test_hooks_disabled_without_secret(
    serve: Serve,
    http: aiohttp.ClientSession,
    backend: MemoryBackend,
    hook: str,
    headers: dict[str, str],
) -> None:
    url = await serve(api_token=TOKEN)
    async with http.post(f"{url}/hooks/{hook}", data=b"{}", headers=headers) as response:
        assert response.status == 404
        assert await _json(response) == {"error": "webhooks disabled: no webhook_secret configured"}
    assert backend.syncs == []


async def test_burst_of_webhooks_each_request_a_sync(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    # Coalescing is the daemon's job: the server passes every request on, at once.
    bodies = [f'{{"n": {n}}}'.encode() for n in range(20)]

    async def post(body: bytes) -> int:
        headers = {"X-Signature-256": _sign(body)}
        async with http.post(f"{url}/hooks/generic", data=body, headers=headers) as response:
            return response.status

    async with asyncio.timeout(5):
        statuses = await asyncio.gather(*(post(body) for body in bodies))
    assert statuses == [202] * 20
    assert backend.syncs == ["webhook generic"] * 20


@pytest.mark.parametrize(
    ("hook", "headers"),
    [
        ("github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=00"}),
        ("gitlab", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.decode()}),
        ("generic", {"X-Signature-256": "sha256=00"}),
    ],
)
async def test_oversized_body_is_413(
    url: str,
    http: aiohttp.ClientSession,
    backend: MemoryBackend,
    hook: str,
    headers: dict[str, str],
) -> None:
    # A file-like body (aiohttp warns about large raw bytes) with a Content-Length.
    body = io.BytesIO(b"x" * (MiB + 1))
    async with http.post(f"{url}/hooks/{hook}", data=body, headers=headers) as response:
        assert response.status == 413
        assert "at most 1048576 bytes" in (await _json(response))["error"]
    assert backend.syncs == []


async def test_oversized_chunked_body_is_413(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    # No Content-Length: the limit has to cut the stream off while reading.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * (64 * 1024)

    headers = {"X-Signature-256": "sha256=00"}
    async with http.post(f"{url}/hooks/generic", data=chunks(), headers=headers) as response:
        assert response.status == 413
        assert "too large" in (await _json(response))["error"]
    assert backend.syncs == []


async def test_body_at_the_limit_is_accepted(
    url: str, http: aiohttp.ClientSession, backend: MemoryBackend
) -> None:
    body = b"x" * MiB
    headers = {"X-Signature-256": _sign(body)}
    data = io.BytesIO(body)
    async with http.post(f"{url}/hooks/generic", data=data, headers=headers) as response:
        assert response.status == 202
    assert len(backend.syncs) == 1


async def test_secrets_never_in_responses_or_logs(
    url: str, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    signed = _sign(b"{}")
    calls: list[tuple[str, str, dict[str, str]]] = [
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("GET", "/api/v1/status", {}),
        ("GET", "/api/v1/resources", {}),
        ("GET", "/api/v1/events?limit=nope", {}),
        ("POST", "/api/v1/sync", {}),
        ("POST", "/api/v1/sync", {"Authorization": "Bearer nope"}),
        ("POST", "/api/v1/sync", {"Authorization": f"Bearer {TOKEN}"}),
        ("POST", "/hooks/github", {"X-GitHub-Event": "push"}),
        ("POST", "/hooks/github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": "x"}),
        ("POST", "/hooks/github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": signed}),
        ("POST", "/hooks/github", {"X-GitHub-Event": "ping", "X-Hub-Signature-256": signed}),
        ("POST", "/hooks/gitlab", {"X-Gitlab-Token": "nope"}),
        ("POST", "/hooks/gitlab", {"X-Gitlab-Token": SECRET.decode()}),
        ("POST", "/hooks/generic", {"X-Signature-256": "sha256=00"}),
        ("POST", "/hooks/generic", {"X-Signature-256": signed}),
    ]
    seen: list[str] = []
    for method, path, headers in calls:
        async with http.request(method, f"{url}{path}", data=b"{}", headers=headers) as response:
            seen.append(f"{response.status} {dict(response.headers)} {await response.text()}")
    text = "\n".join(seen)
    for secret in (SECRET.decode(), TOKEN, signed.removeprefix("sha256=")):
        assert secret not in text
        assert secret not in caplog.text
    # The requests above were logged (access log, rejections): the check is not vacuous.
    assert "rejected" in caplog.text


# Settings and lifecycle


def test_settings_repr_hides_secrets() -> None:
    settings = ServerSettings(webhook_secret=SECRET, api_token=TOKEN)
    assert SECRET.decode() not in repr(settings)
    assert TOKEN not in repr(settings)
    assert (settings.host, settings.port) == ("127.0.0.1", 9108)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"webhook_secret": b""}, "webhook_secret: expected a non-empty secret"),
        ({"api_token": ""}, "api_token: expected a non-empty token"),
        ({"api_token": "  "}, "api_token: expected a non-empty token"),
        ({"port": 70000}, "port: expected 0..65535, got 70000"),
        ({"max_body_bytes": 0}, "max_body_bytes: expected > 0"),
    ],
)
def test_settings_refuse_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerSettings(**kwargs)


async def test_start_binds_ephemeral_port_and_stop_is_bounded_and_idempotent(
    backend: MemoryBackend, http: aiohttp.ClientSession
) -> None:
    server = await start(backend, ServerSettings(port=0, shutdown_timeout=1.0))
    assert server.port > 0
    async with http.get(f"http://127.0.0.1:{server.port}/healthz") as response:
        assert response.status == 200
    async with asyncio.timeout(3):
        await server.stop()
        await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as fresh:
            await fresh.get(f"http://127.0.0.1:{server.port}/healthz")


async def test_start_on_a_busy_port_fails_cleanly(backend: MemoryBackend) -> None:
    async with await start(backend, ServerSettings(port=0)) as first:
        with pytest.raises(OSError):
            await start(backend, ServerSettings(port=first.port))
