"""HttpObject against a real REST server on 127.0.0.1 (tests/httpserver.py).

The provider is driven as the engine drives it (observe_many, plan, apply,
delete), with the connection table filled as `bind` fills it; the server
counts the requests, so "a second pass writes nothing" is a count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.model import (
    PREPARED,
    SENSITIVE,
    Action,
    Change,
    PermanentError,
    PrepareContext,
    ProviderSettings,
    TemporaryError,
)
from reconciler.providers import _http
from reconciler.providers.connection import ConnectionProvider, ConnectionSpec, HttpConnection
from reconciler.providers.http import HttpObjectProvider, HttpObjectSpec
from tests.httpserver import ApiProcess, ApiServer, make_cert

pytestmark = pytest.mark.timeout(30)

TOKEN = "tok-3f9a8c71e2b4d6"
API_KEY = "key-51c0de77aa19"
PASSWORD = "pw-9b8e7f6a5d4c"


@pytest.fixture
def server() -> Iterator[ApiServer]:
    with ApiServer() as api:
        yield api


def ctx(tmp_path: Path) -> PrepareContext:
    return PrepareContext(manifest=tmp_path / "m.yaml", config_root=tmp_path)


def connection(base_url: str, tmp_path: Path | None = None, **extra: Any) -> HttpConnection:
    """A prepared HttpConnection, its secret references resolved as the loader does."""
    spec = ConnectionSpec.model_validate({"type": "http", "baseUrl": base_url, **extra})
    prepared = ConnectionProvider(ProviderSettings()).prepare(spec, ctx(tmp_path or Path("/")))
    conn = prepared.root
    assert isinstance(conn, HttpConnection)
    return conn


def provider(**conns: HttpConnection) -> HttpObjectProvider:
    settings = ProviderSettings()
    settings.connections.install(conns)
    return HttpObjectProvider(settings)


def spec(url: str = "/things/a", tmp_path: Path | None = None, **extra: Any) -> HttpObjectSpec:
    data = {"connection": "api", "url": url, "body": {"name": "a", "size": 3}, **extra}
    parsed = HttpObjectSpec.model_validate(data)
    return HttpObjectProvider(ProviderSettings()).prepare(parsed, ctx(tmp_path or Path("/")))


async def converge(p: HttpObjectProvider, s: HttpObjectSpec) -> Action:
    """One pass as the engine makes it: observe, plan, apply, verify."""
    [observed] = await p.observe_many([s])
    plan = p.plan(s, observed)
    if not plan.empty:
        await p.apply(s, plan)
        [observed] = await p.observe_many([s])
        assert p.plan(s, observed).empty, p.plan(s, observed)
    return plan.action


async def test_create_by_put_then_a_second_pass_writes_nothing(server: ApiServer) -> None:
    p = provider(api=connection(server.base_url))
    s = spec()
    [observed] = await p.observe_many([s])
    assert observed is None
    plan = p.plan(s, observed)
    assert plan.action is Action.CREATE
    assert plan.changes == (Change("/body/name", None, "a"), Change("/body/size", None, 3))
    await p.apply(s, plan)
    assert server.objects["/things/a"]["size"] == 3
    assert "uid" in server.objects["/things/a"]  # added by the server: no drift below
    assert [x.method for x in server.seen if x.method != "GET"] == ["PUT"]
    writes = server.writes
    assert await converge(p, s) is Action.NONE
    assert server.writes == writes


async def test_create_by_post_to_a_collection(server: ApiServer) -> None:
    p = provider(api=connection(server.base_url))
    s = spec("/things/a", create={"method": "POST", "url": "/things"})
    assert await converge(p, s) is Action.CREATE
    posts = [x for x in server.seen if x.method == "POST"]
    assert [x.path for x in posts] == ["/things"]
    assert server.objects["/things/a"]["name"] == "a"
    assert await converge(p, s) is Action.NONE


async def test_out_of_band_change_is_drift_and_healed(server: ApiServer) -> None:
    p = provider(api=connection(server.base_url))
    s = spec(body={"name": "a", "size": 3, "tags": ["x"], "limits": {"cpu": 2}})
    await converge(p, s)
    server.objects["/things/a"]["size"] = 9
    server.objects["/things/a"]["limits"]["cpu"] = True  # true is not 2, nor is it 1
    [observed] = await p.observe_many([s])
    plan = p.plan(s, observed)
    assert plan.action is Action.UPDATE
    assert set(plan.changes) == {
        Change("/body/size", 9, 3),
        Change("/body/limits/cpu", True, 2),
    }
    await p.apply(s, plan)
    assert server.objects["/things/a"]["size"] == 3
    assert await converge(p, s) is Action.NONE


async def test_only_the_fields_the_spec_sets_are_compared(server: ApiServer) -> None:
    p = provider(api=connection(server.base_url))
    s = spec(body={"name": "a", "limits": {"cpu": 2}, "tags": ["x", "y"], "ratio": 1})
    await converge(p, s)
    obj = server.objects["/things/a"]
    obj["limits"]["memory"] = "1Gi"  # a server default inside an object: no drift
    obj["status"] = {"phase": "ready"}
    obj["ratio"] = 1.0  # the same JSON number
    [observed] = await p.observe_many([s])
    assert p.plan(s, observed).empty
    obj["tags"] = ["x", "y", "z"]  # arrays are compared whole
    [observed] = await p.observe_many([s])
    assert p.plan(s, observed).changes == (Change("/body/tags", ["x", "y", "z"], ["x", "y"]),)
    del obj["limits"]
    [observed] = await p.observe_many([s])
    assert Change("/body/limits", None, {"cpu": 2}) in p.plan(s, observed).changes


async def test_ignore_fields_of_the_spec_and_of_the_policy(server: ApiServer) -> None:
    p = provider(api=connection(server.base_url))
    s = spec(body={"name": "a", "size": 3, "meta": {"owner": "x"}}, ignoreFields=["/meta/owner"])
    await converge(p, s)
    server.objects["/things/a"]["meta"]["owner"] = "someone else"
    server.objects["/things/a"]["size"] = 4
    [observed] = await p.observe_many([s])
    plan = p.plan(s, observed)
    assert plan.changes == (Change("/body/size", 4, 3),)
    assert plan.without(["/body/size"]).empty  # what the engine does with policy.ignoreFields


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_by_put_or_patch(server: ApiServer, method: str) -> None:
    p = provider(api=connection(server.base_url))
    s = spec(update={"method": method})
    await converge(p, s)
    server.objects["/things/a"].update(size=1, note="added by hand")
    assert await converge(p, s) is Action.UPDATE
    assert [x.method for x in server.seen if x.method != "GET"] == ["PUT", method]
    # PUT replaces the object, PATCH merges into it
    assert ("note" in server.objects["/things/a"]) is (method == "PATCH")


async def test_delete_and_delete_again(server: ApiServer) -> None:
    p = provider(api=connection(server.base_url))
    s = spec()
    await converge(p, s)
    await p.delete(s)
    assert "/things/a" not in server.objects
    await p.delete(s)  # 404: already gone, not an error
    assert [x.method for x in server.seen[-2:]] == ["DELETE", "DELETE"]


async def test_429_retry_after_is_the_delay(server: ApiServer) -> None:
    p = provider(api=connection(server.base_url))
    server.fail(429, retry_after="7")
    with pytest.raises(TemporaryError) as info:
        await p.observe_many([spec()])
    assert info.value.delay == 7.0
    assert "429" in str(info.value)
    server.fail(503, method="PUT")
    with pytest.raises(TemporaryError) as info:
        await converge(p, spec())
    assert info.value.delay is None and "503" in str(info.value)
    assert await converge(p, spec()) is Action.CREATE  # the server is back


async def test_500_is_temporary(server: ApiServer) -> None:
    p = provider(api=connection(server.base_url))
    server.fail(500, times=2)
    with pytest.raises(TemporaryError, match="answered 500"):
        await p.observe_many([spec()])


async def test_400_is_permanent_with_the_answer_redacted(
    server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("HTTP_TEST_KEY", API_KEY)
    monkeypatch.setenv("HTTP_TEST_PASSWORD", PASSWORD)
    conn = connection(
        server.base_url,
        headers={"X-Api-Key": {"valueFrom": {"env": "HTTP_TEST_KEY"}}, "X-Team": "blue"},
        auth={"bearer": {"valueFrom": {"env": "HTTP_TEST_TOKEN"}}},
    )
    p = provider(api=conn)
    body = {"name": "a", "password": {"valueFrom": {"env": "HTTP_TEST_PASSWORD"}}}
    s = spec(body=body)
    server.fail(400, echo=True, method="PUT")  # the answer quotes the headers and the body
    with pytest.raises(PermanentError) as info:
        await converge(p, s)
    message = str(info.value)
    assert message.startswith(f"PUT {server.base_url}/things/a answered 400: ")
    assert "bad request" in message and "X-Team" in message and SENSITIVE in message
    for secret in (TOKEN, API_KEY, PASSWORD):
        assert secret not in message
        assert secret in server.seen[-1].body.decode() + str(server.seen[-1].headers)  # sent


async def test_secrets_never_in_plans_stored_spec_or_describe(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_TEST_PASSWORD", PASSWORD)
    p = provider(api=connection(server.base_url))
    s = spec(
        body={"name": "a", "login": {"password": {"valueFrom": {"env": "HTTP_TEST_PASSWORD"}}}}
    )
    [observed] = await p.observe_many([s])
    plan = p.plan(s, observed)
    assert Change.masked("/body/login", absent=True) in plan.changes
    assert PASSWORD not in repr(plan)
    await p.apply(s, plan)
    assert server.objects["/things/a"]["login"] == {"password": PASSWORD}
    server.objects["/things/a"]["login"]["password"] = "changed by hand"
    [observed] = await p.observe_many([s])
    assert p.plan(s, observed).changes == (Change.masked("/body/login/password"),)
    stored = s.model_dump_json()
    assert PASSWORD not in stored and "sensitive:hmac-sha256:" in stored
    assert PASSWORD not in p.describe(s) and PASSWORD not in repr(s)
    # the stored spec read back (a prune after a restart) still deletes the object
    back = HttpObjectSpec.model_validate_json(stored, context=PREPARED)
    await p.delete(back)
    assert "/things/a" not in server.objects


async def test_ping_401_is_permanent_and_the_token_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_TEST_TOKEN", TOKEN)
    with ApiServer(token=TOKEN) as server:
        with pytest.raises(PermanentError, match="401: the connection's credentials are refused"):
            await _http.ping(connection(server.base_url))
        good = connection(
            server.base_url, auth={"bearer": {"valueFrom": {"env": "HTTP_TEST_TOKEN"}}}
        )
        await _http.ping(good)
        p = provider(api=good)
        assert await converge(p, spec()) is Action.CREATE


async def test_unreachable_server_is_temporary() -> None:
    with ApiServer() as gone:
        base_url = gone.base_url  # a port that was just closed
    conn = connection(base_url, timeout="2s")
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="cannot reach"):
        await _http.ping(conn)
    p = provider(api=conn)
    with pytest.raises(TemporaryError, match="cannot reach"):
        await p.observe_many([spec(f"/things/{n}") for n in range(50)])
    assert time.monotonic() - started < 2


async def test_timeout_is_temporary(server: ApiServer) -> None:
    server.slow(1.0)
    p = provider(api=connection(server.base_url, timeout="200ms"))
    with pytest.raises(TemporaryError, match=r"timed out after 0\.2 s"):
        await p.observe_many([spec()])


async def test_tls_verified_through_ca_file_refused_without(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    with ApiProcess(cert=(cert, key)) as server:
        assert server.base_url.startswith("https://")
        trusted = connection(server.base_url, caFile=str(cert))
        await _http.ping(trusted)
        assert await converge(provider(api=trusted), spec()) is Action.CREATE
        with pytest.raises(PermanentError, match=r"TLS failed .*certificate"):
            await _http.ping(connection(server.base_url))
        with pytest.raises(PermanentError, match="TLS failed"):
            await provider(api=connection(server.base_url)).observe_many([spec()])


async def test_observe_many_concurrent_and_bounded_by_max_in_flight(server: ApiServer) -> None:
    p = provider(api=connection(server.base_url, maxInFlight=3))
    specs = [spec(f"/things/{n}", body={"name": str(n)}) for n in range(12)]
    await asyncio.gather(*(converge(p, s) for s in specs))
    server.slow(0.1)
    started = time.monotonic()
    observed = await p.observe_many(specs)
    elapsed = time.monotonic() - started
    assert [o["body"]["name"] for o in observed if o is not None] == [str(n) for n in range(12)]
    assert server.peak == 3
    assert 0.4 <= elapsed < 1.1  # 12 requests, 3 at a time, 0.1 s each


async def test_answers_are_bounded_and_must_be_json_objects(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = provider(api=connection(server.base_url))
    await converge(p, spec(body={"name": "a", "text": "x" * 5000}))
    monkeypatch.setattr(_http, "MAX_BODY", 4096)
    with pytest.raises(PermanentError, match="over the limit of 4096"):
        await p.observe_many([spec()])
    server.objects["/list"] = [1, 2]  # type: ignore[assignment]
    with pytest.raises(PermanentError, match="a JSON list, expected a JSON object"):
        await p.observe_many([spec("/list")])


async def test_missing_connection_is_permanent(server: ApiServer) -> None:
    with pytest.raises(PermanentError, match="connection 'api' is not declared"):
        await provider().observe_many([spec()])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"url": "http://elsewhere/x"}, "relative to the connection's baseUrl"),
        ({"url": "//elsewhere/x"}, "relative to the connection's baseUrl"),
        ({"url": "/a/../b"}, "relative to the connection's baseUrl"),
        ({"create": {"method": "POST"}}, "needs create.url"),
        ({"create": {"url": "/things"}}, "only for POST"),
        ({"update": {"method": "POST"}}, "'PUT' or 'PATCH'"),
        ({"body": {"when": __import__("datetime").date(2026, 1, 1)}}, "quote dates"),
        ({"body": ["not", "an", "object"]}, "dictionary"),
        ({"ignoreFields": ["size"]}, "JSON pointer"),
        ({"headers": {"Authorization": "x"}}, "set by the connection"),
        ({"connection": ""}, "at least 1 character"),
    ],
)
def test_invalid_specs_are_rejected(data: dict[str, Any], message: str) -> None:
    base = {"connection": "api", "url": "/things/a", "body": {"name": "a"}}
    with pytest.raises(ValidationError, match=message):
        HttpObjectSpec.model_validate({**base, **data})


def test_one_client_per_loop_closed_with_its_loop(server: ApiServer) -> None:
    conn = connection(server.base_url)
    clients: list[Any] = []

    async def use() -> None:
        await _http.ping(conn)
        clients.append(_http._loop_clients().by_key[conn.model_dump_json()].client)

    asyncio.run(use())
    asyncio.run(use())  # a second loop: a client of its own, the first was closed
    assert clients[0] is not clients[1]
    assert all(c.is_closed for c in clients)


async def test_a_changed_connection_gets_a_new_client_and_the_old_one_closes(
    server: ApiServer,
) -> None:
    old, new = connection(server.base_url), connection(server.base_url, timeout="5s")
    p = provider(api=old)
    await p.observe_many([spec()])
    first = _http._loop_clients().by_key[old.model_dump_json()].client
    p.settings.connections.install({"api": new})
    p.bind({"HttpObject/a": spec()})
    await p.observe_many([spec()])
    await asyncio.sleep(0)  # let the close task run
    assert first.is_closed
    assert list(_http._loop_clients().by_key) == [new.model_dump_json()]
