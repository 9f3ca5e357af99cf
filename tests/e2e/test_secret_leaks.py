"""One known secret, used everywhere a secret can be used, found nowhere it must
not be (issue 4, part 4).

The real daemon follows a smart-HTTP git server that wants the secret as its
token (`--token-file`), checks webhooks signed with it (`--webhook-secret-file`),
and manages files made from it: a template variable read from the environment
(`valueFrom: {env}`) and a whole key file (`valueFrom: {file}`). The test drives
it through a convergence, signed and badly signed webhooks, drift healed and drift
only warned about, a failing fetch and a rejected revision whose template error
quotes the secret, and runs `reconciler plan` (text and JSON) on the same tree.
Then the secret must appear in none of: the daemon's debug log, every /api/v1
response, /metrics, the plan outputs, and the raw bytes of every file under the
state directory (database, WAL, cache, git cache). The managed files do hold it:
the secret reached its targets.
"""

from __future__ import annotations

import json
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.templates import WITHHELD
from tests.e2e.daemon_harness import (
    DaemonProcess,
    Daemons,
    doc,
    docs,
    file_doc,
    hmac_signature,
    read_text,
    run_cli,
)
from tests.e2e.test_notifications import Receiver
from tests.gitservers import GitRepos, SmartHTTPServer, WorkClone

SECRET = "canary-" + secrets.token_hex(12)
"""The one secret: git token, webhook secret and the value of managed files."""
SENSITIVE = "(sensitive value)"
TEMPLATE = "[db]\nuser = app\npassword = {{ password }}\n"


@pytest.fixture
def http_server(repos: GitRepos) -> Iterator[SmartHTTPServer]:
    with SmartHTTPServer(repos.root, token=SECRET) as server:
        yield server


def manifests(root: Path, key_file: Path, plain: str) -> dict[str, str]:
    return {
        "app.ini.j2": TEMPLATE,
        "app.yaml": docs(
            doc(
                "File",
                "app",
                {
                    "path": str(root / "app.ini"),
                    "template": "app.ini.j2",
                    "vars": {"password": {"valueFrom": {"env": "DB_PASSWORD"}}},
                },
            ),
            doc(
                "File",
                "key",
                {"path": str(root / "tls.key"), "content": {"valueFrom": {"file": str(key_file)}}},
                {"drift": "warn"},
            ),
            file_doc("plain", root / "plain.txt", plain),
        ),
    }


def push(work: WorkClone, message: str, files: dict[str, str]) -> str:
    sha = work.commit(message, files)
    work.push()
    return sha


def api_texts(daemon: DaemonProcess) -> dict[str, str]:
    """Every /api/v1 response and /metrics, as text."""
    texts = {
        "/api/v1/status": json.dumps(daemon.status()),
        "/api/v1/resources": json.dumps(daemon.resources()),
        "/api/v1/events": json.dumps(daemon.events(limit=1000)),
    }
    for resource in daemon.resources():
        path = f"/api/v1/resources/{resource['id']}"
        texts[path] = json.dumps(daemon.resource(resource["id"]))
        texts[f"/api/v1/events?resource={resource['id']}"] = json.dumps(
            daemon.events(resource=resource["id"])
        )
    metrics = daemon.request("GET", "/metrics")
    assert metrics.status == 200
    texts["/metrics"] = metrics.body.decode()
    assert "reconciler_resource_state" in texts["/metrics"]
    return texts


@pytest.mark.timeout(180)
def test_one_secret_used_everywhere_appears_nowhere_but_in_its_targets(
    http_server: SmartHTTPServer,
    work: WorkClone,
    daemons: Daemons,
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    private = tmp_path / "private"
    private.mkdir()
    token_file, hook_file, key_file = (private / n for n in ("git-token", "hook", "tls.key"))
    token_file.write_text(SECRET + "\n")
    hook_file.write_text(SECRET + "\n")
    pem = f"-----BEGIN KEY-----\n{SECRET}\n-----END KEY-----\n"
    key_file.write_text(pem)
    app, key, plain = root / "app.ini", root / "tls.key", root / "plain.txt"
    expected_app = f"[db]\nuser = app\npassword = {SECRET}\n"

    sha1 = push(work, "first", manifests(root, key_file, "v1\n"))
    # notifications, signed with the secret too, to a real receiver
    receiver = Receiver(tmp_path / "receiver", secret=SECRET)
    notifications = private / "notifications.yaml"
    notifications.write_text(
        f"receivers:\n  - {{name: ops, type: webhook, url: 'http://127.0.0.1:{receiver.port}/',"
        f" secret_file: {receiver.secret_file}, rate: {{burst: 100, per: 1m}}}}\n"
    )
    daemon = daemons.start(
        http_server.url(),
        root=root,
        webhook_secret=False,
        secrets=[SECRET],
        env={"DB_PASSWORD": SECRET},
        args=[
            "--token-file",
            str(token_file),
            "--webhook-secret-file",
            str(hook_file),
            "--log-level",
            "debug",
            "--notifications",
            str(notifications),
        ],
    )
    daemon.wait_revision(sha1)

    # the secret reached its targets, privately
    assert read_text(app) == expected_app and read_text(key) == pem
    assert stat.S_IMODE(app.stat().st_mode) == 0o600 == stat.S_IMODE(key.stat().st_mode)
    assert any(r.authorized for r in http_server.requests)

    # webhooks: unsigned and badly signed refused, a signed one accepted
    sha2 = push(work, "second", manifests(root, key_file, "v2\n"))
    body = json.dumps({"ref": "refs/heads/main", "after": sha2}).encode()
    push_event = {"X-GitHub-Event": "push"}
    assert daemon.hook("github", body, push_event).status == 401
    bad = {**push_event, "X-Hub-Signature-256": hmac_signature(SECRET + "x", body)}
    assert daemon.hook("github", body, bad).status == 401
    assert daemon.hook("gitlab", body, {"X-Gitlab-Token": SECRET[:-1]}).status == 401
    assert daemon.hook("generic", body, {"X-Signature-256": "sha256=00"}).status == 401
    good = {**push_event, "X-Hub-Signature-256": hmac_signature(SECRET, body)}
    assert daemon.hook("github", body, good).status == 202
    daemon.wait_revision(sha2)
    daemon.wait_file(plain, "v2\n")
    daemon.settle()

    # drift: healed (app.ini), only reported under drift: warn (the key)
    app.write_text(f"[db]\npassword = {SECRET}-edited-by-hand\n")
    key.write_text(pem + f"# {SECRET} appended by hand\n")
    daemon.wait_file(app, expected_app)
    drifted = daemon.wait_state("File/key", "Drifted")
    assert drifted["drift"] == [{"field": "/content", "sensitive": True}]
    # logged once the pass ends; the API shows the drift as the resource settles
    daemon.wait_until(lambda: "File/key drifted" in daemon.logs(), "the drift logged")

    # plan on the same tree, beside the running daemon
    plan_args = [str(work.path), "--root", str(root), "--state-dir", str(daemon.state_dir)]
    # (exit 0: drift under warn is reported, nothing would change; the state
    # directory's digest key makes the unchanged spec read as unchanged)
    plan = run_cli("plan", *plan_args, env={"DB_PASSWORD": SECRET})
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "File/key" in plan.stdout and "content: (sensitive value changed)" in plan.stdout
    assert "policy warn" in plan.stdout
    plan_json = run_cli("plan", *plan_args, "--json", env={"DB_PASSWORD": SECRET})
    assert plan_json.returncode == 0, plan_json.stdout + plan_json.stderr
    [key_change] = [c for c in json.loads(plan_json.stdout)["changes"] if c["id"] == "File/key"]
    assert key_change["action"] == "drift-warn"
    assert key_change["changes"] == [{"field": "/content", "sensitive": True}]

    # a failing fetch: the server wants another token for a while
    http_server.token = "another-token-" + secrets.token_hex(4)
    moment = time.time()
    assert daemon.sync().status == 202
    failed = daemon.wait_fetch_after(moment, ok=False)
    assert failed["lastError"]
    http_server.token = SECRET
    moment = time.time()
    assert daemon.sync().status == 202
    daemon.wait_fetch_after(moment, ok=True)

    # a rejected revision whose template error would quote the secret
    bad_template = {"app.ini.j2": "{{ {}[password] }}\n"}
    sha3 = push(work, "bad template", {**manifests(root, key_file, "v2\n"), **bad_template})
    assert daemon.sync().status == 202
    status = daemon.wait_until(
        lambda: (s := daemon.status())["rejected"] and s["rejected"]["revision"] == sha3 and s,
        "the commit with the failing template to be rejected",
    )
    # a secret in scope: the place and the cause's class only (decision 0055)
    assert any(WITHHELD in str(e) for e in status["rejected"]["errors"]), status["rejected"]
    assert read_text(app) == expected_app  # the last good revision stays enforced

    # what the receiver was told: the drift of the key (sensitive), the heal, the rejection
    receiver.wait("the key's drift told", lambda x: "File/key drifted" in str(x))
    receiver.wait("the rejection told", lambda x: sha3 in str(x) and "rejected" in str(x))
    receiver.close()
    told = receiver.out.read_text()
    assert '"kind": "rejected"' not in told  # every signature (keyed with the secret) checks

    texts = api_texts(daemon)
    texts["notifications"] = told
    texts["plan"] = plan.stdout + plan.stderr
    texts["plan --json"] = plan_json.stdout + plan_json.stderr
    texts["status command"] = run_cli("status", "--url", daemon.url).stdout
    daemon.stop()

    daemon.assert_no_secrets()  # the debug log, and the daemon's own API token
    for name, text in texts.items():
        assert SECRET not in text, f"the secret leaked into {name}"
    stored = [p for p in daemon.state_dir.rglob("*") if p.is_file()]
    assert any(p.name == "state.db" for p in stored)
    for path in stored:
        assert SECRET.encode() not in path.read_bytes(), f"the secret is stored in {path}"
    # and it is still where it belongs
    assert read_text(app) == expected_app
    assert SECRET in read_text(key)  # type: ignore[operator]
