"""HttpObjects end to end: a config tree with a Connection, through the real CLI
(`python -m reconciler plan/apply`), against the real REST server of
tests/httpserver.py; and a connection that cannot be reached failing its own
resources while the others converge."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Sandbox, doc, docs
from tests.httpserver import ApiServer

pytestmark = pytest.mark.timeout(60)

TOKEN = "e2e-token-7c1d94b2a6"
PASSWORD = "e2e-pw-0a9f3e5b81"


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(token=TOKEN) as server:
        yield server


def tree(sandbox: Sandbox, base_url: str, *, with_b: bool = True, size: int = 3) -> None:
    connection = doc(
        "Connection",
        "api",
        {
            "type": "http",
            "baseUrl": base_url,
            "auth": {"bearer": {"valueFrom": {"env": "E2E_API_TOKEN"}}},
            "timeout": "5s",
        },
    )
    a = doc(
        "HttpObject",
        "a",
        {
            "connection": "api",
            "url": "/teams/a",
            "body": {"name": "a", "size": size, "owner": {"valueFrom": {"env": "E2E_PASSWORD"}}},
            "update": {"method": "PATCH"},
        },
    )
    b = doc(
        "HttpObject",
        "b",
        {
            "connection": "api",
            "url": "/teams/b",
            "body": {"name": "b", "limits": {"cpu": 2}},
            "create": {"method": "POST", "url": "/teams"},
        },
    )
    file = doc("File", "note", {"path": str(sandbox.root / "note.txt"), "content": "hi\n"})
    sandbox.write("api.yaml", docs(connection, a, *([b] if with_b else []), file))


def env() -> dict[str, str]:
    return {**os.environ, "E2E_API_TOKEN": TOKEN, "E2E_PASSWORD": PASSWORD}


def state_text(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file())


def test_apply_plan_drift_and_prune_through_the_cli(sandbox: Sandbox, api: ApiServer) -> None:
    tree(sandbox, api.base_url)
    planned = sandbox.run("plan", check=2, env=env())
    assert "+ HttpObject/a" in planned.stdout and "/teams/a on api" in planned.stdout
    assert api.writes == 0  # a plan writes nothing

    applied = sandbox.run("apply", check=0, env=env())
    assert api.objects["/teams/a"]["owner"] == PASSWORD  # the secret's text is what is sent
    assert api.objects["/teams/b"]["limits"] == {"cpu": 2}
    assert [x.path for x in api.seen if x.method == "POST"] == ["/teams"]
    assert (sandbox.root / "note.txt").read_text() == "hi\n"

    writes = api.writes
    again = sandbox.run("apply", check=0, env=env())
    assert api.writes == writes  # a no-op pass: GETs only
    sandbox.run("plan", check=0, env=env())

    api.objects["/teams/a"]["size"] = 99  # by hand
    drift = sandbox.run("plan", check=2, env=env())
    assert "~ HttpObject/a" in drift.stdout and "body.size: 99 -> 3" in drift.stdout
    healed = sandbox.run("apply", check=0, env=env())
    assert api.objects["/teams/a"]["size"] == 3
    assert [x.method for x in api.seen if x.method != "GET"][-1] == "PATCH"

    tree(sandbox, api.base_url, with_b=False)
    pruned = sandbox.run("apply", check=0, env=env())
    assert "/teams/b" not in api.objects and "/teams/a" in api.objects

    shown = "".join(r.stdout + r.stderr for r in (planned, applied, again, drift, healed, pruned))
    for secret in (TOKEN, PASSWORD):
        assert secret not in shown
        assert secret.encode() not in state_text(sandbox.state)


def test_a_refused_token_fails_the_connection(sandbox: Sandbox, api: ApiServer) -> None:
    tree(sandbox, api.base_url)
    result = sandbox.run("apply", check=1, env={**env(), "E2E_API_TOKEN": "wrong-token-123"})
    assert "Connection/api" in result.stdout and "401" in result.stdout
    assert "credentials are refused" in result.stdout
    assert "wrong-token-123" not in result.stdout + result.stderr
    assert api.writes == 0
    assert (sandbox.root / "note.txt").read_text() == "hi\n"  # the rest converges


def test_an_unreachable_connection_fails_its_resources_the_rest_converge(
    sandbox: Sandbox,
) -> None:
    with ApiServer() as gone:
        base_url = gone.base_url  # a port just closed: nothing listens there
    tree(sandbox, base_url)
    result = sandbox.run("apply", check=1, env=env())
    assert "Connection/api" in result.stdout and "cannot reach the server" in result.stdout
    assert "HttpObject/a" in result.stdout and "HttpObject/b" in result.stdout
    assert (sandbox.root / "note.txt").read_text() == "hi\n"
    assert TOKEN not in result.stdout + result.stderr
