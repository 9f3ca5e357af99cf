"""A cluster of real `reconciler run` processes sharing one PostgreSQL store and
one managed root, for the high-availability tests and trials: start them, see
who leads, fail the leader (SIGKILL, SIGSTOP, its database sessions cut), time
the takeover, and read the log a Command appends "$RECONCILER_DAEMON_ID
$RECONCILER_EPOCH" to.

Each daemon logs in as a PostgreSQL role of its own, so "the leader's sessions
cut" is real: its role may no longer log in (NOLOGIN) and its sessions are
terminated (pg_terminate_backend), while the others go on.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.daemon_harness import DaemonProcess, Daemons, doc, docs, file_doc, wait_until
from tests.gitservers import free_port
from tests.postgres import Server

LEASE = "4s"
"""The CI tests' lease: takeovers within ~4 s keep them short (the trials script
runs the default, 10 s)."""
PASSWORD = "ha-role-pw-not-a-secret"


def status(daemon: DaemonProcess) -> dict[str, Any] | None:
    """The daemon's `ha` status, or None when it does not answer (stopped, dead)."""
    if not daemon.running():
        return None
    try:
        response = daemon.request("GET", "/api/v1/status", timeout=0.5)
    except OSError:
        return None
    if response.status != 200:
        return None
    ha: dict[str, Any] = response.json()["ha"]
    return ha


@dataclass
class Cluster:
    """Daemons of one shard on one database, one managed root, one config tree.

    Clusters of several shards share one database: give each its `shard` and
    the first one's `database` (made only if missing); `repo` is a git URL to
    follow instead of the `config` directory."""

    server: Server
    daemons: Daemons
    root: Path
    config: Path
    lease: str = LEASE
    database: str = field(default_factory=lambda: "ha_" + uuid.uuid4().hex[:10])
    members: dict[str, DaemonProcess] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    shard: str | None = None
    repo: str | None = None

    def __post_init__(self) -> None:
        query = "SELECT 1 FROM pg_database WHERE datname = %s"
        if not self.server.sql(query, (self.database,)):
            self.server.sql(f"CREATE DATABASE {self.database}")
        self.log = self.root / "stamps.log"
        self.password_file = self.daemons.workdir / "pg-password"
        self.password_file.write_text(PASSWORD + "\n")

    def close(self) -> None:
        for daemon in self.members.values():
            daemon.kill()
        self.server.sql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
        for role in self.roles.values():
            self.server.sql(f"DROP ROLE IF EXISTS {role}")

    # the config tree

    def write(self, trial: int) -> None:
        """The desired state of `trial`: two files, and a Command that stamps the
        log once per trial (its `creates` guard is on the shared root, so a new
        leader finds it done)."""
        stamp = (
            f'echo "$RECONCILER_DAEMON_ID $RECONCILER_EPOCH" >> {self.log} '
            f"&& touch {self.root}/stamped-{trial}"
        )
        (self.config / "ha.yaml").write_text(
            docs(
                file_doc("a", self.root / "a.txt", "alpha\n"),
                file_doc("trial", self.root / "trial.txt", f"{trial}\n"),
                doc(
                    "Command",
                    f"stamp-{trial}",
                    {"shell": True, "command": stamp, "creates": f"{self.root}/stamped-{trial}"},
                ),
            )
        )

    def stamps(self) -> list[tuple[str, int]]:
        """(daemon id, epoch) of every stamp, in order."""
        if not self.log.exists():
            return []
        found = []
        for line in self.log.read_text().splitlines():
            who, epoch = line.split()
            found.append((who, int(epoch)))
        return found

    # the daemons

    def start(self, name: str, *, ready: bool = True) -> DaemonProcess:
        """Start (or start again) daemon `name`, with its own role and state dir."""
        if name not in self.roles:
            role = f"{self.database}_{name}"
            self.server.sql(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
            self.roles[name] = role
        previous = self.members.get(name)
        port = previous.port if previous is not None else free_port()
        url = (
            f"postgresql://{self.roles[name]}@{self.server.host}:{self.server.port}/{self.database}"
        )
        daemon = self.daemons.make(
            self.repo or self.config,
            root=self.root,
            state_dir=self.daemons.workdir / f"state-{name}",
            port=port,
            args=[
                *("--state-url", url, "--state-password-file", str(self.password_file)),
                *("--lease-duration", self.lease, "--daemon-id", name),
                *("--advertise-url", f"http://127.0.0.1:{port}", "--allow-commands"),
                *(("--shard", self.shard) if self.shard else ()),
            ],
        )
        daemon.start()
        daemon.wait_healthy()
        self.members[name] = daemon
        self.stopped.discard(name)
        if ready:
            daemon.wait_ready()
        return daemon

    def leader(self, *, above: int = 0, timeout: float = 30.0) -> tuple[str, int]:
        """The one daemon leading at an epoch above `above`: (name, epoch)."""

        def one() -> tuple[str, int] | None:
            leading = [
                (name, ha["epoch"])
                for name, daemon in self.members.items()
                if name not in self.stopped
                and (ha := status(daemon)) is not None
                and ha["role"] == "leader"
                and ha["epoch"] > above
            ]
            return leading[0] if len(leading) == 1 else None

        return wait_until(one, f"one leader above epoch {above}", timeout=timeout, interval=0.02)

    def standby(self, name: str, timeout: float = 30.0) -> None:
        daemon = self.members[name]
        daemon.wait_until(
            lambda: (ha := status(daemon)) is not None and ha["role"] == "standby",
            f"{name} to be a standby",
            timeout=timeout,
        )

    # failures

    def fail(self, name: str, how: str) -> Callable[[], None]:
        """Fail daemon `name` `how` ("kill", "stop" or "session"); returns what
        brings it back (as a standby)."""
        daemon, role = self.members[name], self.roles[name]
        self.stopped.add(name)
        if how == "kill":
            daemon.kill()
            return lambda: self.start(name, ready=False) and None
        if how == "stop":
            daemon.send(signal.SIGSTOP)

            def resume() -> None:
                daemon.send(signal.SIGCONT)
                self.stopped.discard(name)

            return resume
        assert how == "session", how
        self.server.sql(f"ALTER ROLE {role} NOLOGIN")
        self.server.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )

        def reconnect() -> None:
            self.server.sql(f"ALTER ROLE {role} LOGIN")
            self.stopped.discard(name)

        return reconnect

    def takeover(self, how: str) -> tuple[float, str, str, int]:
        """Fail the leader `how`; wait for another to lead at a higher epoch; the
        seconds that took, who failed, who leads and at which epoch. The failed
        daemon is brought back as a standby (SIGCONT, a restart, its login)."""
        old, epoch = self.leader()
        back = self.fail(old, how)
        failed = time.monotonic()
        new, new_epoch = self.leader(above=epoch, timeout=30.0)
        seconds = time.monotonic() - failed
        assert new != old, f"{old} failed ({how}) yet leads at epoch {new_epoch}"
        back()
        return seconds, old, new, new_epoch
