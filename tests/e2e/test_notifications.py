"""The daemon's notifications end to end: a real `reconciler run` with a receivers
file, a real git server, and scripts/notify_receiver.py as the receiver, a real
HTTP server on 127.0.0.1 that checks the webhook's signature (and serves a
Slack-compatible endpoint that apprise's mmost:// posts to)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.notify import verify
from tests.e2e.daemon_harness import Daemons, assert_stays, doc, docs, file_doc, wait_until
from tests.e2e.test_daemon import push
from tests.gitservers import GitDaemon, WorkClone, free_port

pytestmark = pytest.mark.timeout(90)

ROOT_DIR = Path(__file__).resolve().parents[2]
SECRET = "notify-hmac-71c2e4a9-not-a-real-secret"
CHAT_TOKEN = "chattoken8d1f3b7a90c2e4f6a8b0"


class Receiver:
    """scripts/notify_receiver.py as a process; what it printed, parsed."""

    def __init__(self, workdir: Path, secret: str = SECRET) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.secret_file = workdir / "notify-secret"
        self.secret_file.write_text(secret + "\n")
        self.out = workdir / "receiver.out"
        self._out = self.out.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT_DIR / "scripts" / "notify_receiver.py"),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--secret-file",
                str(self.secret_file),
            ],
            stdout=self._out,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT_DIR,
        )
        assert self.process.stderr is not None
        first = self.process.stderr.readline()  # printed once it is about to listen
        assert "receiving notifications" in first, first
        wait_until(self._listening, "the receiver to listen", timeout=10)

    def _listening(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def wait(self, what: str, match: Any, timeout: float = 15) -> dict[str, Any]:
        found: dict[str, Any] = wait_until(
            lambda: next((line for line in self.lines() if match(line)), None),
            what,
            timeout=timeout,
            context=lambda: self.out.read_text()[-3000:],
        )
        return found

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._out.close()
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    got = Receiver(tmp_path / "receiver")
    yield got
    got.close()


def webhook(line: dict[str, Any], condition: str, subject: str | None = None) -> bool:
    if line["kind"] != "webhook" or line["payload"]["condition"] != condition:
        return False
    return subject is None or line["payload"]["subject"] == subject


def receivers_file(tmp_path: Path, receiver: Receiver, extra: str = "") -> Path:
    (tmp_path / "chat-url").write_text(f"mmost://127.0.0.1:{receiver.port}/{CHAT_TOKEN}\n")
    path = tmp_path / "notifications.yaml"
    path.write_text(
        f"""\
receivers:
  - name: ops
    type: webhook
    url: http://127.0.0.1:{receiver.port}/reconciler
    secret_file: {receiver.secret_file}
    rate: {{burst: 100, per: 1m}}
  - name: chat
    type: apprise
    url_file: chat-url
    events: [revision-rejected, resource-drifted]
{extra}"""
    )
    return path


def test_the_daemon_tells_applied_drifted_healed_failed_and_rejected(
    git_server: GitDaemon,
    work: WorkClone,
    root: Path,
    daemons: Daemons,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    warned, healed = root / "warned.conf", root / "healed.conf"
    manifests = docs(
        file_doc("warned", warned, "desired\n", {"drift": "warn"}),
        file_doc("healed", healed, "desired\n"),
    )
    sha1 = push(work, "first", {"app.yaml": manifests})
    notifications = receivers_file(tmp_path, receiver)
    daemon = daemons.start(
        git_server.url(),
        root=root,
        args=["--notifications", str(notifications)],
        secrets=[SECRET, CHAT_TOKEN],
    )
    daemon.wait_revision(sha1)
    applied = receiver.wait("revision applied", lambda x: webhook(x, "revision-applied", sha1))
    payload = applied["payload"]
    assert payload["fields"]["created"] == "2" and payload["severity"] == "info"
    assert payload["origin"]["source"] == git_server.url()
    assert applied["event"] == "revision-applied"
    daemon.settle()

    # drift under `warn`: told to both (the chat receiver asked for drift)
    warned.write_text("by hand\n")
    drifted = receiver.wait("drift told", lambda x: webhook(x, "resource-drifted", "File/warned"))[
        "payload"
    ]
    assert drifted["severity"] == "warning" and drifted["fields"]["fields"] == "/content"
    assert "by hand" in drifted["fields"]["/content"]
    chat = receiver.wait("drift in chat", lambda x: x["kind"] == "slack")
    assert chat["token"] == CHAT_TOKEN and "File/warned drifted" in chat["text"]

    # a persisting drift is told once: a second edit of the same file is the same key
    warned.write_text("by hand, again\n")
    daemon.wait_until(
        lambda: "again" in str(daemon.resource("File/warned")["drift"]), "second drift seen"
    )

    # a healed drift (policy heal) is told
    healed.write_text("by hand\n")
    daemon.wait_file(healed, "desired\n")
    receiver.wait("heal told", lambda x: webhook(x, "drift-healed", "File/healed"))

    # a resource that fails: its parent is a regular file
    (root / "blocker").write_text("a file, not a directory\n")
    sha2 = push(
        work,
        "second",
        {"app.yaml": docs(manifests, file_doc("broken", root / "blocker" / "x.conf", "x\n"))},
    )
    daemon.sync()
    daemon.wait_revision(sha2)
    failed = receiver.wait("failure told", lambda x: webhook(x, "resource-failed", "File/broken"))
    assert failed["payload"]["severity"] == "error" and failed["payload"]["fields"]["error"]

    # an invalid revision: rejected, with its first errors, to both receivers
    sha3 = push(work, "broken", {"bad.yaml": doc("File", "bad", {"path": 42})})
    daemon.sync()
    rejected = receiver.wait("rejection told", lambda x: webhook(x, "revision-rejected", sha3))
    fields = rejected["payload"]["fields"]
    assert fields["cause"] == "invalid" and "bad.yaml" in fields["error 1"]
    receiver.wait("rejection in chat", lambda x: x["kind"] == "slack" and sha3[:12] in x["text"])

    drifts = [x for x in receiver.lines() if webhook(x, "resource-drifted", "File/warned")]
    assert len(drifts) == 1, drifts
    assert not [x for x in receiver.lines() if x["kind"] == "rejected"]  # all signatures good
    everything = receiver.out.read_text()
    assert SECRET not in everything and CHAT_TOKEN not in everything.replace(
        f'"token": "{CHAT_TOKEN}"', ""
    )

    metrics = daemon.request("GET", "/metrics").body.decode()
    assert 'reconciler_notifications_total{outcome="sent",receiver="ops"}' in metrics
    assert SECRET not in metrics and CHAT_TOKEN not in metrics
    daemon.stop()


def test_a_stale_source_is_told_once_and_its_recovery_after(
    git_server: GitDaemon,
    work: WorkClone,
    root: Path,
    daemons: Daemons,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    sha1 = push(work, "first", {"app.yaml": file_doc("app", root / "app.conf", "v1\n")})
    daemon = daemons.start(
        git_server.url(),
        root=root,
        interval="300ms",
        args=["--notifications", str(receivers_file(tmp_path, receiver))],
        secrets=[SECRET, CHAT_TOKEN],
    )
    daemon.wait_revision(sha1)
    git_server.stop()
    stale = receiver.wait("stale told", lambda x: webhook(x, "source-stale"))["payload"]
    assert stale["severity"] == "warning" and stale["fields"]["error"]
    time.sleep(1.5)  # several more failed polls: still one notification
    assert len([x for x in receiver.lines() if webhook(x, "source-stale")]) == 1
    git_server.start()
    receiver.wait("recovery told", lambda x: webhook(x, "source-recovered"))
    daemon.stop()


def test_a_receiver_that_hangs_never_holds_up_healing(
    git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons, tmp_path: Path
) -> None:
    import socket

    hanging = socket.socket()  # accepts connections (backlog) and never answers
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(64)
    (tmp_path / "secret").write_text(SECRET)
    notifications = tmp_path / "notifications.yaml"
    notifications.write_text(
        f"""\
receivers:
  - name: stuck
    type: webhook
    url: http://127.0.0.1:{hanging.getsockname()[1]}/
    secret_file: secret
    timeout: 30s
"""
    )
    targets = [root / f"app{i}.conf" for i in range(5)]
    manifests = docs(*(file_doc(f"app{i}", t, "v1\n") for i, t in enumerate(targets)))
    sha1 = push(work, "first", {"app.yaml": manifests})
    try:
        daemon = daemons.start(
            git_server.url(), root=root, args=["--notifications", str(notifications)]
        )
        daemon.wait_revision(sha1)
        daemon.settle()
        for target in targets:  # each heal is told; the receiver never answers
            target.write_text("by hand\n")
            started = time.monotonic()
            daemon.wait_file(target, "v1\n", timeout=5)
            assert time.monotonic() - started < 3
        assert_stays(lambda: daemon.request("GET", "/healthz").status == 200, "alive", seconds=0.2)
        stopped = time.monotonic()
        daemon.stop()  # the queued notification gets a bounded wait, not 30 s
        assert time.monotonic() - stopped < 15
    finally:
        hanging.close()


def test_a_bad_receivers_file_stops_the_start_with_where_and_what(
    git_server: GitDaemon, root: Path, daemons: Daemons, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text(SECRET)
    notifications = tmp_path / "notifications.yaml"
    notifications.write_text(
        "receivers:\n  - name: ops\n    type: webhook\n    url: http://h/\n"
        "    secret_file: secret\n    events: [resource-exploded]\n"
    )
    daemon = daemons.make(git_server.url(), root=root, args=["--notifications", str(notifications)])
    daemon.start()
    code = daemon.wait_exit(timeout=20)
    assert code != 0
    log = daemon.logs()
    assert f"--notifications: {notifications}:6: receivers[0].events[0]: unknown event" in log
    assert SECRET not in log


def test_the_signature_is_checked_by_a_receiver_with_its_own_copy_of_the_secret(
    receiver: Receiver,
) -> None:
    """The documented scheme, from the outside: a body signed with another secret
    or tampered with is refused by the receiver script."""
    import urllib.error
    import urllib.request

    from reconciler.notify import sign

    body = b'{"condition": "revision-applied"}'
    now = int(time.time())
    for secret, sent in ((SECRET.encode(), body), (b"other", body), (SECRET.encode(), b"{}")):
        request = urllib.request.Request(
            f"http://127.0.0.1:{receiver.port}/x",
            data=sent,
            headers={"X-Reconciler-Signature": sign(secret, body, now)},
        )
        try:
            status = urllib.request.urlopen(request, timeout=5).status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status == (204 if (secret, sent) == (SECRET.encode(), body) else 401)
    assert verify(SECRET.encode(), body, sign(SECRET.encode(), body, now), now)
