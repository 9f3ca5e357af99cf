"""A throwaway PostgreSQL server for the tests: initdb into a temporary directory,
listening on 127.0.0.1 only, on a free port; stopped (and its directory removed)
at the end of the session.

The superuser `postgres` has a password (SCRAM over TCP, as a real server would
ask for); the unix socket in the data directory trusts its local user, which is
how the tests change things "out of band" (`Server.sql`). Startup is about 1.5 s:
`initdb --no-sync`, `fsync=off`. `pg_stat_statements` is loaded so tests can
count the statements a provider sends.

PostgreSQL 15 is installed from Debian on demand (a fresh CI machine has none).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.system import ensure_debian

BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER_PASSWORD = "s3cret-superuser-pw"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        argv = ("runuser", "-u", "postgres", "--", *argv)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@dataclass
class Server:
    """A running server: where it listens and how to reach it as superuser."""

    host: str
    port: int
    socket_dir: Path
    data: Path
    log: Path
    password: str = SUPERUSER_PASSWORD

    def connection(self, **over: Any) -> dict[str, Any]:
        """A `Connection` spec (type postgres) for this server, as loaded."""
        spec: dict[str, Any] = {
            "type": "postgres",
            "host": self.host,
            "port": self.port,
            "user": "postgres",
            "database": "postgres",
            "connectTimeout": 5,
        }
        spec.update(over)
        return spec

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """An out-of-band superuser session over the trusted unix socket."""
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user="postgres",
            dbname=dbname,
            autocommit=True,
        )

    def sql(
        self, query: Any, params: Any = None, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement out of band; its rows (empty for a command)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else []


def start_server(base: Path) -> Server:
    """Start a server in `base` (made if missing; its parents must let the
    postgres user through, as a fresh `tempfile.mkdtemp()` under /tmp does)."""
    ensure_debian(str(BIN / "initdb"), "postgresql-15")
    base.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    base.chmod(0o700)
    data, log, pwfile = base / "data", base / "pg.log", base / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    init = _as_postgres(
        str(BIN / "initdb"),
        "-D", str(data),
        "-U", "postgres",
        "--pwfile", str(pwfile),
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E", "UTF8",
        "--locale=C.UTF-8",
        "--no-sync",
    )  # fmt: skip
    if init.returncode != 0:
        pytest.fail(f"initdb failed:\n{init.stderr[-2000:]}")
    port = _free_port()
    options = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off "
        "-c shared_preload_libraries=pg_stat_statements -c max_connections=100"
    )
    started = _as_postgres(
        str(BIN / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(log),
        "-w",
        "-t",
        "60",
        "-o",
        options,
        "start",
    )
    if started.returncode != 0:
        tail = log.read_text()[-2000:] if log.exists() else ""
        pytest.fail(f"pg_ctl start failed:\n{started.stderr[-2000:]}\n{tail}")
    server = Server("127.0.0.1", port, base, data, log)
    server.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return server


def stop_server(server: Server) -> None:
    _as_postgres(str(BIN / "pg_ctl"), "-D", str(server.data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server]:
    """One PostgreSQL server for the whole session."""
    base = Path(tempfile.mkdtemp(prefix="reconciler-pg-"))
    try:
        server = start_server(base)
        try:
            yield server
        finally:
            stop_server(server)
    finally:
        shutil.rmtree(base, ignore_errors=True)
