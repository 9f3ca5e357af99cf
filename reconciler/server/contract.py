"""What the server's parts share: the `Backend` it serves (the daemon, seen
through a protocol), the `ServerSettings` it runs with, and the one shape of
an error body.

The request handlers (`api`, `hooks`) and the wiring (`app`) all import this
module and nothing imports them back, so it imports nothing of the server's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web

from reconciler.httplimits import HttpLimits
from reconciler.web import PageBackend

# Every part of the server logs as "reconciler.server": the log's repeat filter,
# the documentation and operators' log queries name that logger.
log: Final = logging.getLogger("reconciler.server")

MiB: Final = 1024 * 1024


class Backend(PageBackend, Protocol):
    """What the server needs from the daemon: what the status page reads
    (`PageBackend`: `status`, `page`, `events`) and the rest below.

    Every method is called on the event loop from a request handler, so each must
    answer quickly from memory (or a cache) and never block; what needs the store's
    database (`events`) is a coroutine; `request_sync` only records the wish and
    returns.
    """

    def live(self) -> bool:
        """True while the daemon's event loop is running (liveness)."""
        ...

    def ready(self) -> tuple[bool, str]:
        """(True, "") once the store is open and a revision loaded, else (False, why)."""
        ...

    def resources(self, kind: str | None) -> list[dict[str, Any]] | Awaitable[list[dict[str, Any]]]:
        """Every resource, or those of one kind; each with its `instance`. May be a
        coroutine (the daemon's builds a long list a slice at a time)."""
        ...

    def resource(self, kind: str, name: str) -> dict[str, Any] | None:
        """One resource, or None when there is no `kind/name`."""
        ...

    def request_sync(self, reason: str) -> Leader | None:
        """Ask for a source fetch soon; the daemon coalesces bursts. A standby
        (high availability) asks for nothing and answers where the leader is: the
        request is forwarded there (307) or refused with its name (503)."""
        ...


@dataclass(frozen=True)
class Leader:
    """The daemon that takes syncs, as a standby knows it: its id (None: no
    leader now) and its advertised API URL ("" when it advertised none)."""

    id: str | None
    url: str = ""


@dataclass(frozen=True)
class ServerSettings:
    """Where to listen and which secrets guard the write endpoints.

    `None` disables the endpoint a secret guards. The secrets are left out of the
    repr so that logging the settings cannot leak them.
    """

    host: str = "127.0.0.1"
    port: int = 9108
    webhook_secret: bytes | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)
    max_body_bytes: int = MiB
    shutdown_timeout: float = 5.0
    limits: HttpLimits = field(default_factory=HttpLimits)

    def __post_init__(self) -> None:
        # An empty secret would make HMAC keyless and the GitLab token check
        # accept an empty header: refuse it rather than run unguarded.
        if self.webhook_secret is not None and not self.webhook_secret:
            raise ValueError("webhook_secret: expected a non-empty secret or None, got empty")
        if self.api_token is not None and not self.api_token.strip():
            raise ValueError("api_token: expected a non-empty token or None, got empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: expected 0..65535, got {self.port}")
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes: expected > 0, got {self.max_body_bytes}")
        if self.shutdown_timeout <= 0:
            raise ValueError(f"shutdown_timeout: expected > 0, got {self.shutdown_timeout}")


def error(status: int, message: str) -> web.Response:
    """Every error the server sends: `{"error": message}` with `status`."""
    return web.json_response({"error": message}, status=status)
