"""Bugs the fuzz tests found, each as the smallest input that shows it, marked
`xfail(strict=True)` until fixed (then the mark comes off and the test stays).

Fixed: an explicit YAML tag with a value its constructor cannot convert
(`!!int 0x_`, `!!float abc`, `!!bool maybe`, `!!timestamp 2001-13-45`) raised
ValueError or KeyError out of PyYAML's SafeConstructor, so `validate`, `plan`,
`apply` and the daemon's load ended in "internal error" instead of a
`file:line` ManifestError.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.manifests import ManifestError, load
from reconciler.model import ProviderSettings
from reconciler.registry import Registry
from tests.e2e.daemon_harness import Daemons, file_doc

pytestmark = pytest.mark.fuzz

BAD_TAGS = [
    "!!int 0x_",
    "!!int 0b",
    "!!float abc",
    "!!bool maybe",
    "!!timestamp 2001-13-45",
    "!!timestamp 2001-12-14...",  # no match at all: AttributeError in PyYAML
]
MANIFEST = (
    "apiVersion: reconciler/v1\nkind: File\nmetadata: {{name: a}}\n"
    "spec: {{path: {root}/a, content: x, mode: {value}}}\n"
)


@pytest.mark.parametrize("value", BAD_TAGS)
def test_a_malformed_tagged_scalar_is_a_manifest_error(tmp_path: Path, value: str) -> None:
    root = tmp_path / "root"
    config = tmp_path / "config"
    config.mkdir()
    (config / "m.yaml").write_text(MANIFEST.format(root=root, value=value))
    registry = Registry.discover(ProviderSettings(roots=(str(root),)))
    with pytest.raises(ManifestError) as caught:
        load(config, registry)
    assert caught.value.issues[0].file == "m.yaml"
    assert caught.value.issues[0].line == 4


def test_validate_reports_a_malformed_tagged_scalar_as_a_file_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = tmp_path / "config"
    config.mkdir()
    (config / "m.yaml").write_text(MANIFEST.format(root=root, value="!!int 0x_"))
    argv = [sys.executable, "-m", "reconciler", "validate", str(config), "--root", str(root)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "internal error" not in result.stderr, result.stderr
    assert "m.yaml:4" in result.stderr, result.stderr


# A webhook whose sender stops before the promised body (Content-Length over what
# it sends, then EOF) makes the body read raise ConnectionResetError inside the
# handler; the server's error middleware logs it as "error serving POST
# /hooks/generic" with a full traceback, as for a bug of its own. Found by
# tests/fuzz/test_http.py. Fixed: a warning line and a 400, no traceback.


def test_a_client_gone_mid_body_leaves_no_traceback(tmp_path: Path) -> None:
    root, config = tmp_path / "root", tmp_path / "config"
    root.mkdir()
    config.mkdir()
    (config / "app.yaml").write_text(file_doc("app", root / "app.conf", "x\n"))
    with Daemons(tmp_path / "daemons") as daemons:
        daemon = daemons.start(config, root=root)
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as conn:
                conn.sendall(
                    b"POST /hooks/generic HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                    b"X-Signature-256: sha256=00\r\n\r\n0123456789"
                )
                time.sleep(0.2)  # the handler is waiting for the rest of the body
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass
        assert daemon.request("GET", "/healthz").status == 200
        assert "Traceback" not in daemon.logs(), daemon.log_tail()


# Found by the `full` profile: `resync:` with no value (null) reached the
# duration parser, whose regex raised TypeError: an internal error.


@pytest.mark.parametrize("value", ["null", "[5m]", "{a: 1}", ".nan", ".inf", "-1"])
def test_a_duration_of_the_wrong_type_is_a_manifest_error(tmp_path: Path, value: str) -> None:
    root, config = tmp_path / "root", tmp_path / "config"
    config.mkdir()
    (config / "m.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: a}\n"
        f"spec: {{path: {root}/a, content: x}}\npolicy:\n  resync: {value}\n"
    )
    registry = Registry.discover(ProviderSettings(roots=(str(root),)))
    with pytest.raises(ManifestError) as caught:
        load(config, registry)
    [issue] = caught.value.issues
    assert (issue.file, issue.line, issue.field) == ("m.yaml", 6, "policy.resync")
    assert "duration" in issue.message
