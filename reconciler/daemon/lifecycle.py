"""The daemon's wiring and lifecycle: `Daemon` builds its registry, store,
engine, source, HTTP server and poll job, runs its loops in one task group on
one asyncio loop, and stops them within the shutdown timeout.

Its parts: `sync` (fetch, load, converge or reject a revision), `drift` (the
work queue, resync heap, watches and heal backoff) and `views` (what the HTTP
server and the metrics registry read). A new revision's changes, watch events
and due resyncs each become a targeted pass; passes over disjoint resources run
side by side, and no resource is in two at once (`claims`, decision 0126).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import __version__
from reconciler.daemon.announce import Announcer
from reconciler.daemon.claims import Claims
from reconciler.daemon.drift import DriftScheduler
from reconciler.daemon.leading import Leadership
from reconciler.daemon.settings import DaemonSettings, SettingsError, read_secret
from reconciler.daemon.sync import SourceState, Syncer
from reconciler.daemon.views import ApiViews
from reconciler.engine import Engine
from reconciler.looplag import LoopLag
from reconciler.manifests import Cache
from reconciler.metrics import Metrics
from reconciler.model import DesiredState, ProviderSettings
from reconciler.pacing import Pacer
from reconciler.registry import Registry
from reconciler.server import Leader
from reconciler.sources.base import Source, redact
from reconciler.sources.signatures import signature_policy
from reconciler.statekey import place_key
from reconciler.store import OffLoopStore, open_async_store
from reconciler.store.factory import read_password

if TYPE_CHECKING:
    from aiohttp import web

    from reconciler.sources.bundles import GitBundles

log = logging.getLogger("reconciler.daemon")

GC_THRESHOLDS = (1000, 10, 1000)
"""The collector's thresholds in the daemon (Python's are 700, 10, 10), from the
start (a load on its thread collects too): young generations small, so their
collections stay a few ms; full collections rare, since each scans every object
not frozen and would hold the loop 30-150 ms at 12,000 resources (decision 0129)."""


class Daemon(ApiViews):
    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.started = time.time()
        self.desired: DesiredState | None = None
        self.store: OffLoopStore | None = None
        """The store, its SQLite I/O off the loop (decision 0119); the engine gets
        `store.sync`."""
        self.registry: Registry | None = None
        self.engine: Engine | None = None
        self.source: Source | None = None
        self.bundles: GitBundles | None = None
        """Fetcher of remote bundles; a load gets `bundles.session()`."""
        self.source_state = SourceState(url=redact(settings.repo))
        self._stop = asyncio.Event()
        self.scheduler = DriftScheduler(self)
        self.claims = Claims(self.scheduler.queue.released)
        """The resources each pass in flight works on (decision 0126)."""
        self.syncer = Syncer(self)
        self.metrics = Metrics(self.metrics_snapshot, version=__version__)
        self.loop_lag = LoopLag(self.metrics.loop_lag.observe)
        """The event loop's lag, measured while the daemon serves (decision 0120)."""
        self.pacer = Pacer()
        """Paces long work on the loop, the engine's and the API's alike (decision 0128)."""
        self.announcer = Announcer(self)
        """What is told to the notification receivers (`--notifications`)."""
        self.leadership = Leadership(self)
        """Leader or standby, and the election with a PostgreSQL store (decision 0148)."""

    # lifecycle

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or `stop()`); in-flight work finishes first."""
        from aiohttp import web
        from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

        from reconciler import server

        settings = self.settings
        gc.set_threshold(*GC_THRESHOLDS)
        webhook_secret = read_secret(settings.webhook_secret_file, "webhook secret")
        api_token = read_secret(settings.api_token_file, "API token")
        # SQLite (takes the state dir's lock) or PostgreSQL (migrates): opened and
        # its inventory read on the store's thread
        self.store = await open_async_store(
            settings.state_dir,
            settings.state_url,
            shard=settings.shard or "default",
            password_file=settings.state_password_file,
        )
        try:
            shared = await self.store.shared_key("digest")
            if shared is not None:  # the digests of secrets alike on every daemon of the store
                await asyncio.to_thread(
                    place_key, settings.state_dir / "cache" / "digest.key", shared
                )
            password = settings.state_password_file
            self.leadership.configure(
                settings.state_url,
                None if password is None else read_password(password),
                settings.shard or "default",
            )
            self.registry = Registry.discover(
                ProviderSettings(
                    roots=settings.roots,
                    state_dir=str(settings.state_dir),
                    allow_commands=settings.allow_commands,
                    secret_sources=settings.secret_sources,
                    run_records=self.store.run_records,
                )
            )
            # the providers do not change while the daemon runs: fingerprint them once
            self.syncer.cache = Cache(settings.state_dir / "cache", self.registry.fingerprint())
            self.engine = self._make_engine()
            self.source = self._make_source()
            self.bundles = self._make_bundles(self.source)
            # freshness is the store's: a restart does not make a stale source look fresh
            self.source_state.last_success = await self.store.last_fetched(self.source_state.url)
            host, port = settings.listen
            http = await server.start(
                self,
                server.ServerSettings(
                    host=host,
                    port=port,
                    webhook_secret=webhook_secret.encode() if webhook_secret else None,
                    api_token=api_token,
                    limits=settings.http_limits,
                ),
                routes=[web.get("/metrics", self._serve_metrics)],
                pacer=self.pacer,
            )
            self.port = http.port
            self._notifier()
            scheduler = AsyncIOScheduler()
            scheduler.add_job(
                self.request_sync,
                "interval",
                seconds=settings.interval,
                jitter=settings.interval * 0.1,
                args=["poll"],
                id="poll",
            )
            scheduler.start()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            log.info(
                "started: source %s, listening on %s:%d", self.source_state.url, host, http.port
            )
            try:
                await self._supervise()
            finally:
                scheduler.shutdown(wait=False)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
                await http.stop()
        finally:
            await self.store.close()
            log.info("stopped")

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called: the loops start nothing new."""
        return self._stop.is_set()

    def leader_loops(self) -> list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]:
        """What only a leader runs: what fetches, applies and heals."""
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("sync loop", self.syncer.loop),
            ("work loop", self.scheduler.work_loop),
            ("resync loop", self.scheduler.resync_loop),
            ("watch loop", self.scheduler.watch_loop),
        ]
        if hasattr(self.source, "changes"):
            loops.append(("local changes loop", self._local_changes_loop))
        return loops

    def _make_engine(self) -> Engine:
        assert self.registry is not None and self.store is not None
        settings = self.settings
        return Engine(
            self.registry,
            self.store.sync,
            concurrency=settings.concurrency,
            allow_mass_prune=settings.allow_mass_prune,
            max_prune_share=settings.max_prune_share,
            heal_gate=self.scheduler.heal_wait,
            fence=self.leadership.role.fence,
            telemetry=self.metrics,
            on_settled=self.scheduler.on_settled,
            pacer=self.pacer,
        )

    def start_over(self) -> None:
        """After stepping down: what a leader's term built (desired state, queue,
        heal backoffs, claims, the enforced revision) forgotten, so a next term
        starts as a start does."""
        cache = self.syncer.cache
        self.desired = None
        self.source_state = SourceState(url=self.source_state.url)
        self.scheduler = DriftScheduler(self)
        self.claims = Claims(self.scheduler.queue.released)
        self.syncer = Syncer(self)
        self.syncer.cache = cache
        self.engine = self._make_engine()

    async def _supervise(self) -> None:
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("loop lag", self.loop_lag.run),
        ]
        notifier = self.announcer.notifier
        if notifier is not None:
            loops.append(("notifier", notifier.run))
        async with asyncio.TaskGroup() as group:
            loops += self.leadership.loops(group)
            tasks = [group.create_task(job(), name=name) for name, job in loops]
            await self._stop.wait()
            log.info(
                "stopping: waiting up to %.1f s for work in flight", self.settings.shutdown_timeout
            )
            try:
                async with asyncio.timeout(self.settings.shutdown_timeout):
                    await self.claims.close()  # no new pass starts from here on
            except TimeoutError:
                log.warning(
                    "work still in flight after %.0f s: cancelling it",
                    self.settings.shutdown_timeout,
                )
            await self.leadership.stop()  # the leader's loops, then the lease
            if notifier is not None:  # what is queued, within a bounded wait
                await notifier.close(min(5.0, self.settings.shutdown_timeout))
            for task in tasks:
                task.cancel()

    def _notifier(self) -> None:
        """The notifier of the receivers file, when one is configured."""
        notifications = self.settings.notifications
        if notifications is None:
            return
        import socket

        from reconciler.notifier import Notifier

        self.announcer.notifier = Notifier(
            notifications.receivers,
            queue_size=notifications.queue_size,
            attempts=notifications.attempts,
            origin={"daemon": socket.gethostname(), "source": self.source_state.url},
        )
        log.info(
            "notifying %d receiver(s): %s",
            len(notifications.receivers),
            ", ".join(f"{r.name} ({r.type})" for r in notifications.receivers),
        )

    def _make_source(self) -> Source:
        from reconciler.sources.local import LocalSource

        repo = self.settings.repo
        local = Path(repo)
        bare = (local / "HEAD").is_file() and (local / "objects").is_dir()
        if "://" not in repo and local.is_dir() and not (local / ".git").exists() and not bare:
            if self.settings.verify_commits:
                raise SettingsError(
                    f"--verify-commits needs a git repository: {repo} is a plain directory "
                    "(local mode), which has no commits to verify"
                )
            return LocalSource(local / self.settings.path)
        from reconciler.sources.git import GitSource

        url = repo if "://" in repo or ":" in repo.split("/")[0] else local.resolve().as_uri()
        try:
            return GitSource(
                url,
                ref=self.settings.ref,
                path=self.settings.path,
                cache_dir=self.settings.state_dir / "git",
                ssh_key=self.settings.ssh_key,
                known_hosts=self.settings.known_hosts,
                insecure_ignore_host_key=self.settings.insecure_ignore_host_key,
                token_file=self.settings.token_file,
                timeout=120.0,
                signatures=signature_policy(
                    self.settings.verify_commits,
                    self.settings.trusted_keys,
                    self.settings.allowed_signers,
                ),
            )
        except ValueError as exc:  # a bad ref, path or URL: a settings error, not a crash
            raise SettingsError(str(exc)) from None

    def _make_bundles(self, source: Source) -> GitBundles:
        """Remote bundles are fetched with the main repository's credentials and
        signature policy; in local mode with the ssh key and known hosts settings
        (an HTTP token needs the main repository's origin: none in local mode)."""
        from reconciler.sources.bundles import GitBundles
        from reconciler.sources.git import GitSource

        cache = self.settings.state_dir / "bundles"
        if isinstance(source, GitSource):
            return GitBundles.like(source, cache)
        return GitBundles(
            cache,
            ssh_key=self.settings.ssh_key,
            known_hosts=self.settings.known_hosts,
            insecure_ignore_host_key=self.settings.insecure_ignore_host_key,
            timeout=120.0,
            allow_file=True,
        )

    # triggers

    def request_sync(self, reason: str) -> Leader | None:
        """Ask for a sync; a standby asks for none and says where the leader is."""
        forward = self.leadership.forward()
        if forward is None:
            self.syncer.request(reason)
        return forward

    async def _local_changes_loop(self) -> None:
        changes = getattr(self.source, "changes")  # noqa: B009 - only LocalSource has it
        while True:
            try:
                async for _ in changes():
                    self.request_sync("local change")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the directory does not exist (yet)
                log.warning("cannot watch %s: %s; polling only", self.source_state.url, exc)
                await asyncio.sleep(self.settings.interval)

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web

        body, content_type = await self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})
