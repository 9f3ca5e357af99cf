"""`reconciler events` and the daemon's log lines, end to end.

The history comes from real `reconciler apply` runs on a tmp config tree, and
from the real daemon (`reconciler run`, see daemon_harness): `events` reads it
from the state directory, read-only, while the daemon holds that directory, and
from the daemon's /api/v1/events with `--url`; both must say the same. The
daemon's stderr, a file here and not a terminal, must be JSON lines that carry
the revision and the resource.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Sandbox, doc, docs
from tests.e2e.daemon_harness import Daemons, file_doc, run_cli

TABLE_ROW = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})  (?P<id>\S+) +"
    r"(?P<from>\S+) -> (?P<to>\S+) +(?P<event>\S+)(?: +(?P<reason>.*))?$"
)
TEXT_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [A-Z]+ +\S+: ")


def events(sandbox: Sandbox, *args: str, check: int = 0) -> subprocess.CompletedProcess[str]:
    return sandbox.run("events", "--state-dir", str(sandbox.state), *args, check=check)


def events_json(sandbox: Sandbox, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(events(sandbox, "--json", *args).stdout)["events"]
    return found


@pytest.fixture
def history(sandbox: Sandbox) -> float:
    """Two applies: everything created, then File/app healed after a hand edit.
    Returns a unix time between the two."""
    root = sandbox.root
    sandbox.write(
        "app.yaml",
        docs(
            doc("Directory", "app", {"path": str(root / "app")}),
            doc("File", "app", {"path": str(root / "app/app.conf"), "content": "port = 8080\n"}),
            doc("File", "notes", {"path": str(root / "notes.txt"), "content": "n\n"}),
        ),
    )
    sandbox.run("apply", check=0)
    between = time.time()
    time.sleep(0.01)  # the history's clock has a finer grain than needed: keep them apart
    (root / "app/app.conf").write_text("port = 9090\n")
    healed = sandbox.run("apply", check=0)
    assert "1 healed" in healed.stdout, healed.stdout
    return between


def test_events_lists_the_whole_history_oldest_first(sandbox: Sandbox, history: float) -> None:
    everything = events_json(sandbox)
    assert [e["seq"] for e in everything] == sorted(e["seq"] for e in everything)
    assert {e["id"] for e in everything} == {"Directory/app", "File/app", "File/notes"}
    assert set(everything[0]) == {"seq", "at", "id", "from", "to", "event", "reason", "instance"}
    first_app = next(e for e in everything if e["id"] == "File/app")
    assert (first_app["from"], first_app["to"], first_app["event"]) == (None, "Pending", "new")
    # the heal of the second apply is in it, with its reason
    heal = [e for e in everything if e["id"] == "File/app" and e["to"] == "Drifted"]
    assert heal and heal[0]["reason"], everything
    assert everything[-1]["to"] == "InSync"

    table = events(sandbox).stdout.splitlines()
    assert table[0].split() == ["TIME", "RESOURCE", "TRANSITION", "EVENT", "REASON"]
    rows = [TABLE_ROW.match(line) for line in table[1:]]
    assert all(rows), table
    assert [(r["id"], r["from"], r["to"], r["event"]) for r in rows if r] == [
        (e["id"], e["from"] or "-", e["to"], e["event"]) for e in everything
    ]
    reasons = [r["reason"] for r in rows if r and r["reason"]]
    assert reasons == [e["reason"] for e in everything if e["reason"]]
    stamp = datetime.strptime(rows[0]["time"] if rows[0] else "", "%Y-%m-%d %H:%M:%S.%f")
    assert abs(stamp.timestamp() - everything[0]["at"]) < 0.001


def test_events_filters_by_resource_kind_since_and_limit(sandbox: Sandbox, history: float) -> None:
    everything = events_json(sandbox)

    only_app = events_json(sandbox, "--resource", "File/app")
    assert only_app == [e for e in everything if e["id"] == "File/app"]

    files = events_json(sandbox, "--kind", "File")
    assert files == [e for e in everything if e["id"].startswith("File/")]
    assert {e["id"] for e in files} == {"File/app", "File/notes"}

    newest = events_json(sandbox, "--limit", "3")
    assert newest == everything[-3:]
    assert events_json(sandbox, "--resource", "File/app", "--limit", "1") == only_app[-1:]

    second_apply = [e for e in everything if e["at"] > history]
    assert second_apply and len(second_apply) < len(everything)
    assert events_json(sandbox, "--since", repr(history)) == second_apply
    rfc3339 = datetime.fromtimestamp(history, UTC).isoformat().replace("+00:00", "Z")
    assert events_json(sandbox, "--since", rfc3339) == second_apply
    assert events_json(sandbox, "--since", "1h") == everything
    assert (
        events_json(sandbox, "--since", "2h", "--kind", "Directory", "--limit", "2")
        == [e for e in everything if e["id"] == "Directory/app"][-2:]
    )
    assert events_json(sandbox, "--since", "2999-01-01T00:00:00+01:00") == []
    assert events(sandbox, "--since", "2999-01-01T00:00:00Z").stdout == "no events\n"
    assert events_json(sandbox, "--resource", "File/nothing") == []


def test_events_leaves_the_state_directory_untouched(sandbox: Sandbox, history: float) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in sandbox.state.iterdir()}
    events(sandbox)
    events(sandbox, "--json", "--kind", "File")
    assert {p.name: p.stat().st_mtime_ns for p in sandbox.state.iterdir()} == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--resource", "app"), "error: --resource: expected Kind/name such as File/app-config"),
        (("--resource", "File/"), "found 'File/'"),
        (("--kind", "File/app"), "error: --kind: expected a kind such as File, found 'File/app'"),
        (("--since", "yesterday"), "error: --since: expected a duration back from now"),
        (("--since", "-5"), "found '-5'"),
        (("--since", "10 parsecs"), "found '10 parsecs'"),
        (("--since", "0m"), "found '0m'"),
    ],
)
def test_bad_filters_are_one_clear_line(
    sandbox: Sandbox, history: float, args: tuple[str, ...], message: str
) -> None:
    result = events(sandbox, *args, check=1)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_a_missing_state_directory_or_database_is_named(sandbox: Sandbox, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-state"
    result = sandbox.run("events", "--state-dir", str(missing), check=1)
    assert result.stderr.startswith(f"error: state directory {missing} does not exist")
    assert "--state-dir" in result.stderr and "--url" in result.stderr

    empty = tmp_path / "empty-state"
    empty.mkdir()
    result = sandbox.run("events", env={**os.environ, "RECONCILER_STATE_DIR": str(empty)}, check=1)
    assert result.stderr.startswith(f"error: state directory {empty} holds no state.db")
    assert list(empty.iterdir()) == []

    result = sandbox.run("events", cwd=tmp_path, check=1)  # the default, ./.reconciler
    assert f"state directory {tmp_path / '.reconciler'} does not exist" in result.stderr


# against the running daemon


def cli_events(*args: str) -> list[dict[str, Any]]:
    result = run_cli("events", "--json", *args)
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = json.loads(result.stdout)["events"]
    return found


@pytest.mark.timeout(120)
def test_events_of_a_running_daemon_from_its_state_dir_and_its_api(
    config: Path, root: Path, daemons: Daemons
) -> None:
    (config / "app.yaml").write_text(
        docs(
            file_doc("app", root / "app.conf", "v1\n"),
            file_doc("notes", root / "notes.txt", "n\n", {"drift": "warn"}),
        )
    )
    daemon = daemons.start(config, root=root)
    daemon.settle()
    (root / "notes.txt").write_text("by hand\n")
    daemon.wait_state("File/notes", "Drifted")
    state = str(daemon.state_dir)

    # the state dir, read while the daemon holds its lock, says what the API says
    from_api = daemon.wait_until(
        lambda: (
            (api := cli_events("--url", daemon.url)) == cli_events("--state-dir", state) and api
        ),
        "events from the API and from the state dir to agree",
    )
    assert from_api == daemon.events()
    drifted = [e for e in from_api if e["to"] == "Drifted"]
    assert [e["id"] for e in drifted] == ["File/notes"], from_api

    for filters in (
        ("--resource", "File/notes"),
        ("--kind", "File", "--limit", "2"),
        ("--since", repr(drifted[0]["at"] - 0.001)),
        ("--since", "1d", "--resource", "File/app"),
    ):
        via_api = cli_events("--url", daemon.url, *filters)
        assert via_api == cli_events("--state-dir", state, *filters), filters
        assert via_api, filters
    assert cli_events("--url", daemon.url, "--resource", "File/notes")[-1]["to"] == "Drifted"

    table = run_cli("events", "--url", daemon.url, "--resource", "File/notes")
    assert table.returncode == 0, table.stderr
    assert "InSync -> Detecting" in table.stdout or "Planning -> Drifted" in table.stdout

    refused = run_cli("events", "--url", daemon.url, "--limit", "5000")
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: the daemon at {daemon.url} refused the query: "
        "limit: expected an integer 1..1000, got '5000'\n"
    )
    both = run_cli("events", "--url", daemon.url, "--state-dir", state)
    assert both.returncode == 1 and "not both" in both.stderr

    daemon.stop()
    gone = run_cli("events", "--url", daemon.url)
    assert gone.returncode == 1
    assert gone.stderr.startswith(f"error: cannot reach the daemon at {daemon.url}")
    assert cli_events("--state-dir", state)[: len(from_api)] == from_api  # still there


# the daemon's log lines


def test_off_a_terminal_the_daemon_logs_json_lines_with_revision_and_resource(
    config: Path, root: Path, daemons: Daemons, tmp_path: Path
) -> None:
    (config / "app.yaml").write_text(
        docs(
            file_doc("app", root / "app.conf", "v1\n"),
            file_doc("notes", root / "notes.txt", "n\nnon-ASCII: café ✓\n"),
        )
    )
    daemon = daemons.make(config, root=root)
    stdout_path, stderr_path = tmp_path / "stdout", tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        daemon.proc = subprocess.Popen(
            daemon.argv,
            cwd=daemon.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    daemon.wait_healthy()
    daemon.wait_ready()
    revision = daemon.status()["revision"]["id"]
    daemon.stop()

    assert stdout_path.read_text() == ""
    lines = stderr_path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"]), record
        assert record["level"] in ("debug", "info", "warning", "error"), record
        assert record["logger"].startswith("reconciler"), record
        assert isinstance(record["msg"], str)
    messages = [r["msg"] for r in records]
    assert any(m.startswith("started: source ") for m in messages), messages
    assert messages[-1] == "stopped"

    converged = [r for r in records if r["msg"].startswith(f"revision {revision} converged")]
    assert len(converged) == 1, messages
    assert converged[0]["revision"] == revision
    assert converged[0]["logger"] == "reconciler.daemon"

    created = {r["resource"]: r for r in records if "resource" in r}
    assert set(created) == {"File/app", "File/notes"}, messages
    for rid, record in created.items():
        assert record["msg"] == f"{rid} created"
        assert record["revision"] == revision
    daemon.assert_no_secrets(texts=[stderr_path.read_text()])


@pytest.mark.timeout(120)
def test_log_format_and_level_come_from_flags_env_or_the_settings_file(
    config: Path, root: Path, daemons: Daemons, tmp_path: Path
) -> None:
    (config / "app.yaml").write_text(file_doc("app", root / "app.conf", "v1\n"))
    settings = tmp_path / "settings.yaml"
    settings.write_text("log-format: text\nlog-level: info\n")

    text = daemons.start(config, root=root, args=["--config", str(settings)])
    text.stop()
    lines = [line for line in text.logs().splitlines() if line]
    assert lines and all(TEXT_LOG.match(line) for line in lines), lines
    converged = [line for line in lines if " converged: " in line]
    assert len(converged) == 1 and "INFO    reconciler.daemon: revision " in converged[0]
    revision = converged[0].split()[5]
    assert revision.startswith("dir-"), converged[0]  # a local revision id is not shortened
    assert converged[0].endswith(f"  revision={revision}"), converged[0]

    # the environment beats the file, a flag beats the environment
    quiet = daemons.start(
        config,
        root=root,
        state_dir=tmp_path / "state-2",
        args=["--config", str(settings), "--log-level", "warning"],
        env={"RECONCILER_LOG_FORMAT": "json", "RECONCILER_LOG_LEVEL": "debug"},
    )
    quiet.stop()
    assert quiet.logs() == ""  # nothing at warning or above on a clean run

    loud = daemons.start(
        config,
        root=root,
        state_dir=tmp_path / "state-3",
        args=["--config", str(settings)],
        env={"RECONCILER_LOG_FORMAT": "json", "RECONCILER_LOG_LEVEL": "debug"},
    )
    loud.stop()
    records = [json.loads(line) for line in loud.logs().splitlines()]
    assert any(r["level"] == "debug" for r in records)
    assert any(r["logger"].startswith("apscheduler") for r in records), [
        r["logger"] for r in records
    ]


# the client commands' one HTTP client


@pytest.fixture
def not_a_daemon() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 that is not reconciler: /api/v1/status
    answers HTML, /api/v1/events a JSON object without events, anything else 404."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/api/v1/status":
                body, kind, code = b"<html>hello</html>", "text/html", 200
            elif path == "/api/v1/events":
                body, kind, code = b'{"items": []}', "application/json", 200
            else:
                body, kind, code = b"nothing here", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="not-a-daemon", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.timeout(60)
def test_status_and_events_name_a_server_that_is_not_a_daemon(not_a_daemon: str) -> None:
    url = not_a_daemon
    status = run_cli("status", "--url", url)
    assert (status.returncode, status.stdout) == (1, "")
    assert status.stderr == (
        f"error: {url} did not answer like a reconciler daemon (no JSON in its reply)\n"
    )
    listed = run_cli("events", "--url", url)
    assert listed.returncode == 1
    assert listed.stderr == (
        f"error: {url} did not answer like a reconciler daemon (no events list in its reply)\n"
    )
    elsewhere = run_cli("status", "--url", url + "/base")
    assert elsewhere.returncode == 1
    assert elsewhere.stderr == (
        f"error: the daemon at {url}/base refused the query: HTTP 404 Not Found\n"
    )
