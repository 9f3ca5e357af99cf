"""The real daemon under a pile of idle connections and a burst of webhooks.

Before the HTTP limits, 2,000 idle TCP connections to a daemon whose descriptor
limit was 512 made `/healthz` time out, held a heal back until the connections
went away (opening the file to heal needs a descriptor too) and filled the log
with asyncio's accept tracebacks. Here the same pile is opened from the test
process, once against a daemon with the usual limit and once against one
started with RLIMIT_NOFILE at 512: `/healthz` answers a fresh connection at
once, a hand edit heals in the time it takes without the pile, and the log
stays a few lines long with no traceback.
"""

from __future__ import annotations

import errno
import json
import resource
import selectors
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.e2e.daemon_harness import (
    WEBHOOK_SECRET,
    DaemonProcess,
    Daemons,
    file_doc,
    hmac_signature,
    holds,
    wait_until,
)
from tests.gitservers import GitDaemon, WorkClone

IDLE = 2000
DAEMON_NOFILE = 512
HEALTHZ_WITHIN = 2.0
"""Seconds a fresh /healthz may take with the pile open."""
LOG_LINES = 100


@pytest.fixture
def own_nofile() -> Iterator[None]:
    """The test process needs a descriptor per idle connection: its soft limit
    goes up to the hard one for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < IDLE + 256:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) is too low for {IDLE} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def with_nofile(daemon: DaemonProcess, limit: int) -> None:
    """Start `daemon` with RLIMIT_NOFILE at `limit` (what a preexec_fn would do;
    the harness starts the process, so a small exec wrapper sets it)."""
    wrapper = (
        "import os, resource, sys; n = int(sys.argv[1]); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
    )
    assert daemon.argv[0] == sys.executable
    daemon.argv = [sys.executable, "-c", wrapper, str(limit), *daemon.argv[1:]]


def open_idle(port: int, count: int, *, within: float = 30.0) -> tuple[list[socket.socket], int]:
    """`count` connections that send nothing, opened without waiting for each in
    turn; (the sockets, how many the kernel reported established)."""
    sockets, selector = [], selectors.DefaultSelector()
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        assert code in (0, errno.EINPROGRESS), errno.errorcode.get(code, code)
        sockets.append(sock)
        selector.register(sock, selectors.EVENT_WRITE)
    established, pending = 0, len(sockets)
    deadline = time.monotonic() + within
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            selector.unregister(key.fileobj)
            pending -= 1
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                established += 1
    selector.close()
    return sockets, established


def heal_seconds(daemon: DaemonProcess, target: Path, desired: str) -> float:
    daemon.settle()
    started = time.monotonic()
    target.write_text("edited by hand\n")
    wait_until(holds(target, desired), "the hand edit to be healed", timeout=30, interval=0.005)
    return time.monotonic() - started


def healthz_seconds(daemon: DaemonProcess) -> float:
    started = time.monotonic()
    response = daemon.request("GET", "/healthz", timeout=10)  # a fresh connection each time
    assert response.status == 200 and response.body == b"ok"
    return time.monotonic() - started


@pytest.mark.timeout(180)
@pytest.mark.parametrize("nofile", [None, DAEMON_NOFILE], ids=["usual-fd-limit", "fd-limit-512"])
def test_idle_connections_do_not_lock_out_healthz_nor_delay_heals(
    own_nofile: None, tmp_path: Path, root: Path, daemons: Daemons, nofile: int | None
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    target = root / "app.conf"
    (config / "app.yaml").write_text(file_doc("app", target, "desired\n"))
    daemon = daemons.make(config, root=root)
    if nofile is not None:
        with_nofile(daemon, nofile)
    daemon.start()
    daemon.wait_healthy()
    daemon.wait_ready()
    usual = heal_seconds(daemon, target, "desired\n")

    sockets, established = open_idle(daemon.port, IDLE)
    try:
        assert established >= IDLE * 0.9, f"only {established} of {IDLE} connections opened"
        probes = [healthz_seconds(daemon) for _ in range(5)]
        assert max(probes) < HEALTHZ_WITHIN, f"/healthz took {max(probes):.2f}s: {probes}"
        under_pile = heal_seconds(daemon, target, "desired\n")
        assert under_pile < max(2.0, usual + 1.0), (
            f"a heal took {under_pile:.2f}s with {IDLE} idle connections open, {usual:.2f}s without"
        )
        # a second pile while the first is still held open by the caller
        more, _ = open_idle(daemon.port, IDLE // 2)
        sockets += more
        assert healthz_seconds(daemon) < HEALTHZ_WITHIN
    finally:
        for sock in sockets:
            sock.close()
    assert daemon.status()["lastPass"] is not None  # the API answers after the episode
    daemon.stop()
    log = daemon.logs()
    lines = log.splitlines()
    assert "Traceback" not in log, daemon.log_tail()
    assert len(lines) < LOG_LINES, f"{len(lines)} log lines:\n{daemon.log_tail()}"
    closed = [line for line in lines if "HTTP connection from" in line]
    assert 1 <= len(closed) <= 4, "\n".join(closed)  # the cap was reached, said once a kind
    if nofile is not None:
        started = next(json.loads(line) for line in lines if "HTTP server listening" in line)
        assert f"at most {nofile - 256} connections" in started["msg"]


def push(work: WorkClone, message: str, files: Mapping[str, str | None]) -> str:
    sha = work.commit(message, files)
    work.push()
    return sha


@pytest.mark.timeout(120)
def test_a_webhook_burst_gets_429_and_the_pushed_revision_still_arrives(
    git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons, tmp_path: Path
) -> None:
    target = root / "app.conf"
    sha1 = push(work, "first", {"app.yaml": file_doc("app", target, "v1\n")})
    # limits from the settings file, as an operator would set them
    settings = tmp_path / "settings.yaml"
    settings.write_text("hook-rate: 1\nhook-burst: 5\nhttp-header-timeout: 1s\n")
    daemon = daemons.start(git_server.url(), root=root, args=["--config", str(settings)])
    daemon.wait_revision(sha1)

    sha2 = push(work, "second", {"app.yaml": file_doc("app", target, "v2\n")})
    body = json.dumps({"after": sha2}).encode()
    signed = {"X-Signature-256": hmac_signature(WEBHOOK_SECRET, body)}
    answers = [daemon.hook("generic", body, signed) for _ in range(12)]
    statuses = [a.status for a in answers]
    # five at once, then one a second: a slow machine may see one or two refills
    assert 5 <= statuses.count(202) <= 7 and statuses[:5] == [202] * 5, statuses
    limited = [a for a in answers if a.status == 429]
    assert len(limited) >= 5 and all(a.headers["Retry-After"] == "1" for a in limited)
    assert "retry after 1s" in limited[0].json()["error"]
    daemon.wait_revision(sha2)  # the accepted ones asked for the fetch
    assert target.read_text() == "v2\n"

    # a push after the burst, told by a caller that waited Retry-After
    sha3 = push(work, "third", {"app.yaml": file_doc("app", target, "v3\n")})
    body = json.dumps({"after": sha3}).encode()
    time.sleep(1.0)
    again = daemon.hook("generic", body, {"X-Signature-256": hmac_signature(WEBHOOK_SECRET, body)})
    assert again.status == 202
    daemon.wait_revision(sha3)
    assert target.read_text() == "v3\n"

    # the header timeout from the settings file: an idle connection goes in ~1 s
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.settimeout(10)
    started = time.monotonic()
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert 0.8 < time.monotonic() - started < 4.0
    daemon.stop()
    log = daemon.logs()
    assert len([line for line in log.splitlines() if "rate limit" in line]) == 1
    daemon.assert_no_secrets()
