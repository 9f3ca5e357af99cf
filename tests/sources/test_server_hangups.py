"""The test git server takes a client that hangs up early as normal (issue 10):
a fetch that times out or a cancelled clone leaves no traceback in the test
run's output, while the hang-up is still counted for a test to see.
"""

from __future__ import annotations

import socket
import struct

import pytest

from tests.gitservers import GitRepos, SmartHTTPServer

pytestmark = pytest.mark.timeout(30)


def _request_then_reset(server: SmartHTTPServer, path: str) -> None:
    """Send a request, wait until the server has read it, then close the
    connection with a reset (SO_LINGER 0): the server's answer has nowhere to go."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        server.wait_requests(1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_client_that_hangs_up_leaves_no_traceback(
    git_repos: GitRepos, capfd: pytest.CaptureFixture[str]
) -> None:
    git_repos.create()
    with SmartHTTPServer(git_repos.root, delay=0.2) as server:
        _request_then_reset(server, "/repo.git/info/refs?service=git-upload-pack")
        server.wait_finished(1)
        assert server.hangups == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, out + err
    assert "Exception occurred" not in out + err, out + err


def test_a_client_that_stays_is_answered_and_not_counted(git_repos: GitRepos) -> None:
    git_repos.create()
    with SmartHTTPServer(git_repos.root) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /repo.git/info/refs?service=git-upload-pack HTTP/1.0\r\n\r\n")
            answer = sock.makefile("rb").read()
        server.wait_finished(1)
    assert answer.startswith(b"HTTP/1.0 200 "), answer[:200]
    assert server.hangups == 0
