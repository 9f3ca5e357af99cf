"""Secret references read only where the operator allows (--secret-dir,
--secret-env; defaults /run/secrets, /run/credentials, /var/run/secrets and
RECONCILER_SECRET_*): a commit cannot read any file or variable of the process
into a managed object, nor send it to a server it names — through the real CLI.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.conftest import Sandbox, doc, docs
from tests.e2e.daemon_harness import Daemons

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


def test_reconcilers_own_keys_are_never_secrets(sandbox: Sandbox, strict: None) -> None:
    """Even inside an allowed directory: the state directory's keys (a digest key
    would let anyone test guesses against stored digests)."""
    sandbox.run("apply", check=0)  # makes the state directory and its keys
    key = sandbox.state / "state.db"  # the store (its keys live beside it)
    assert key.exists()
    _file(sandbox, {"file": str(key)})
    result = sandbox.run("plan", "--secret-dir", str(sandbox.state.parent), check=1)
    assert "one of reconciler's own credentials or state files" in result.stderr


def test_the_daemon_rejects_a_revision_reading_outside_or_its_own_keys(tmp_path: Path) -> None:
    root, config, allowed = tmp_path / "root", tmp_path / "config", tmp_path / "allowed"
    for directory in (root, config, allowed):
        directory.mkdir()
    (allowed / "app").write_text("app-secret-value\n")
    (tmp_path / "outside").write_text("outside-secret-value\n")

    def manifest(secret: Path) -> None:
        ref = {"valueFrom": {"file": str(secret)}}
        (config / "a.yaml").write_text(
            docs(doc("File", "a", {"path": str(root / "a"), "content": ref}))
        )

    manifest(allowed / "app")
    env = {"RECONCILER_SECRET_DIRS": f"{allowed} {tmp_path / 'daemons'}"}
    with Daemons(tmp_path / "daemons") as daemons:
        daemon = daemons.start(config, root=root, env=env, secrets=("outside-secret-value",))
        assert (root / "a").read_text() == "app-secret-value\n"
        for secret, problem in (
            (tmp_path / "outside", "outside the secret directories"),
            (daemons.webhook_secret_file, "one of reconciler's own credentials"),
        ):
            manifest(secret)
            assert daemon.sync().status == 202

            def rejected(problem: str = problem) -> bool:
                return problem in json.dumps(daemon.status().get("rejected"))

            daemon.wait_until(rejected, f"the revision rejected: {problem}")
            assert (root / "a").read_text() == "app-secret-value\n"  # the last good stays
        assert "outside-secret-value" not in daemon.logs()
