"""The daemon on a PostgreSQL store end to end (issue 13): `reconciler run
--state-url postgresql://... --state-password-file FILE` converges a tree, keeps
its state in the database (not the state directory), restarts without applying
converged resources again, and never shows the password: not in its log, its
status, its events or its metrics. The URL it shows is redacted.

A real daemon process, a real PostgreSQL (tests/postgres.py) with a role of its
own that logs in with a password over TCP, real directories.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.daemon_harness import DaemonProcess, Daemons, docs, file_doc
from tests.postgres import Server

pytestmark = pytest.mark.timeout(120)

PASSWORD = "pg-state-pw-7f3a91c2-not-a-real-secret"


def _database(server: Server) -> tuple[str, str]:
    """A role that logs in with PASSWORD and a database it owns: (user, db)."""
    name = "rc_" + uuid.uuid4().hex[:10]
    server.sql(f"CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'")
    server.sql(f"CREATE DATABASE {name} OWNER {name}")
    return name, name


def _everything_shown(daemon: DaemonProcess) -> list[str]:
    return [
        daemon.request("GET", path).body.decode()
        for path in ("/api/v1/status", "/api/v1/resources", "/api/v1/events", "/metrics", "/readyz")
    ]


def test_the_daemon_on_postgres_converges_restarts_without_reapplying_and_hides_the_password(
    postgres_server: Server, daemons: Daemons, config: Path, root: Path, tmp_path: Path
) -> None:
    user, db = _database(postgres_server)
    url = f"postgresql://{user}@{postgres_server.host}:{postgres_server.port}/{db}"
    password_file = tmp_path / "pg-password"
    password_file.write_text(PASSWORD + "\n")
    files = [root / f"f{n}.conf" for n in range(5)]
    (config / "files.yaml").write_text(
        docs(*(file_doc(f"f{n}", path, f"n={n}\n") for n, path in enumerate(files)))
    )
    args = ("--state-url", url, "--state-password-file", str(password_file))

    first = daemons.start(config, root=root, args=args, secrets=[PASSWORD])
    for n, path in enumerate(files):
        first.wait_file(path, f"n={n}\n")
    first.wait_until(
        lambda: all(r["state"] == "InSync" for r in first.resources()) and len(files),
        "every resource InSync",
    )
    rows = postgres_server.sql(
        "SELECT count(*) FROM reconciler_status WHERE state = 'InSync'", dbname=db
    )
    assert rows == [(len(files),)]
    applied = postgres_server.sql(
        "SELECT count(*) FROM reconciler_events WHERE to_state = 'Applying'", dbname=db
    )
    assert applied == [(len(files),)]
    first.assert_no_secrets(texts=_everything_shown(first))
    first.stop()
    mtimes = {path: path.stat().st_mtime_ns for path in files}

    # a fresh state directory: the state is the database's
    second = daemons.start(
        config, root=root, args=args, secrets=[PASSWORD], state_dir=tmp_path / "other-state"
    )
    second.wait_until(
        lambda: (
            second.status()["lastPass"] is not None
            and all(r["state"] == "InSync" for r in second.resources())
        ),
        "a pass after the restart, every resource InSync",
    )
    assert (
        postgres_server.sql(
            "SELECT count(*) FROM reconciler_events WHERE to_state = 'Applying'", dbname=db
        )
        == applied
    ), "a converged resource was applied again after the restart"
    assert {path: path.stat().st_mtime_ns for path in files} == mtimes
    second.assert_no_secrets(texts=_everything_shown(second))
    second.stop()
    second.assert_no_secrets()


def test_a_wrong_password_fails_the_start_without_showing_it(
    postgres_server: Server, daemons: Daemons, config: Path, root: Path, tmp_path: Path
) -> None:
    user, db = _database(postgres_server)
    url = f"postgresql://{user}@{postgres_server.host}:{postgres_server.port}/{db}"
    wrong = "wrong-pg-pw-0c7d5e-not-a-real-secret"
    password_file = tmp_path / "pg-password"
    password_file.write_text(wrong + "\n")
    (config / "files.yaml").write_text(file_doc("f", root / "f.conf", "x\n"))
    daemon = daemons.make(
        config,
        root=root,
        args=("--state-url", url, "--state-password-file", str(password_file)),
        secrets=[wrong, PASSWORD],
    )
    daemon.start()
    assert daemon.wait_exit() != 0
    assert "password authentication failed" in daemon.logs()
    daemon.assert_no_secrets()
