"""The daemon: follows a source, converges every new revision, watches managed
objects and heals (or reports) drift, and serves the HTTP API.

One asyncio loop runs everything. The package is split by role:

- `lifecycle`: `Daemon`, its wiring (registry, store, engine, source, HTTP
  server, poll job) and its start and bounded stop;
- `sync`: fetch, load, converge or reject a revision; the last good revision
  enforced after a start; secrets reloaded;
- `drift`: the work queue, the resync heap, the providers' watches and the heal
  backoff, turning drift triggers into targeted passes;
- `views`: the JSON views the HTTP server serves and the metrics snapshot;
- `announce`: what is told to the notification receivers, and when;
- `receivers`: the receivers file of `--notifications`, read and checked;
- `settings`: `DaemonSettings` and `SettingsError`.

Everything logs to the "reconciler.daemon" logger.
"""

from __future__ import annotations

from reconciler.daemon.drift import HEAL_RESET, QUIET_AFTER_APPLY
from reconciler.daemon.lifecycle import Daemon
from reconciler.daemon.settings import DaemonSettings, SettingsError

__all__ = ["HEAL_RESET", "QUIET_AFTER_APPLY", "Daemon", "DaemonSettings", "SettingsError"]
