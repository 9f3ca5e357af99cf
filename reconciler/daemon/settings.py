"""The daemon's settings: what `reconciler run` gathers from flags, environment
and files, as one frozen record, and the error a bad setting raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.httplimits import HttpLimits
from reconciler.model import SecretSources
from reconciler.secrets import MAX_SECRET_FILE, FileUnread, read_small_file

if TYPE_CHECKING:
    from reconciler.daemon.receivers import Notifications


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    repo: str
    state_dir: Path
    roots: tuple[str, ...]
    ref: str | None = None
    path: str = "."
    interval: float = 60.0
    listen: tuple[str, int] = ("127.0.0.1", 9108)
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    insecure_ignore_host_key: bool = False
    token_file: Path | None = None
    webhook_secret_file: Path | None = None
    api_token_file: Path | None = None
    concurrency: int = 16
    allow_mass_prune: bool = False
    max_prune_share: float = 0.5
    shutdown_timeout: float = 30.0
    verify_commits: str | None = None
    """None, "gpg" or "ssh": the signature every followed commit (or tag) needs."""
    allow_commands: bool = False
    secret_sources: SecretSources | None = None
    trusted_keys: tuple[Path, ...] = ()
    allowed_signers: Path | None = None
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    """Timeouts, connection cap and rate limits of the HTTP server."""
    notifications: Notifications | None = None
    """The receivers file, read (`--notifications`): None sends nothing."""
    state_url: str | None = None
    """A PostgreSQL database for the state (`--state-url`); None: SQLite in
    state_dir. Shown only redacted."""
    state_password_file: Path | None = None
    """The file of that database user's password (else libpq's environment)."""
    lease_duration: float = 10.0
    """With a PostgreSQL store: the leader's lease, in seconds (decision 0148)."""
    advertise_url: str | None = None
    """The API URL standbys send callers to while this daemon leads."""
    daemon_id: str | None = None
    """This daemon's name in the election; None: host:pid:random, made at start."""
    shard: str | None = None
    """The `Shard` of the repository this daemon enforces (reconciler.shards); None:
    the whole repository, which must then declare no shards. The store's shard is
    this name, "default" without one."""


class SettingsError(Exception):
    pass


def read_secret(path: Path | None, what: str) -> str | None:
    """The stripped text of a secret file (webhook secret, API token), or None
    when it is not configured; a missing, unreadable, empty or oversized file, or
    one that is not a regular file, is a settings error."""
    if path is None:
        return None
    try:
        value = read_small_file(path, MAX_SECRET_FILE).strip()
    except FileUnread as exc:
        raise SettingsError(f"{what} file {path}: {exc}") from None
    if not value:
        raise SettingsError(f"{what} file {path} is empty")
    return value
