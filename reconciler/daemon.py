"""The daemon: follows a source, converges every new revision, watches managed
objects and heals (or reports) drift, and serves the HTTP API.

One asyncio loop runs everything. Triggers (the APScheduler poll job, webhooks,
`POST /api/v1/sync`, local directory changes) only set an event, so a burst of
them coalesces into one fetch. Engine passes never overlap (`_pass_lock`):
a new revision's changes, watch events and due resyncs each become a targeted
pass (`Engine.converge(only=...)`). A rejected revision changes nothing: the last
good desired state stays enforced.

What survives a restart (decision 0066): every converged revision's tree is kept
in the state directory (`sources.kept`), so a start whose first revision cannot be
used enforces the store's last revision again rather than nothing; the last
successful fetch is in the store, so freshness does not reset. A revision whose
specs resolved secrets is loaded again at every sync that brings nothing new, so a
rotated secret file re-applies the resources using it (decision 0067).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import heapq
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from reconciler import __version__, logs
from reconciler.engine import Engine, MassPruneRefused, Report
from reconciler.fsm import Event, State
from reconciler.httplimits import HttpLimits
from reconciler.manifests import Cache, ManifestError, ParseMemo, load, tree_digest
from reconciler.metrics import Metrics, Snapshot
from reconciler.model import DesiredState, ProviderSettings, ResourceId, SecretSources, Sensitive
from reconciler.registry import Registry
from reconciler.sources.base import Revision, Source, SourceError, redact
from reconciler.sources.kept import KeptRevisions
from reconciler.sources.signatures import UntrustedRevision, signature_policy
from reconciler.store import SqliteStore

if TYPE_CHECKING:
    from aiohttp import web

    from reconciler.sources.bundles import BundleSession, GitBundles

log = logging.getLogger("reconciler.daemon")

QUIET_AFTER_APPLY = 1.0
"""Seconds during which watch events of a resource just applied are taken as our own."""
HEAL_RESET = 900.0
"""A resource not healed for this long starts its heal backoff again from 2 s."""


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


class SettingsError(Exception):
    pass


def _read_secret(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{what} file {path}: not UTF-8 text") from None
    if not value:
        raise SettingsError(f"{what} file {path} is empty")
    return value


@dataclass
class _SourceState:
    url: str
    last_fetch: float | None = None
    last_fetch_ok: bool | None = None
    last_success: float | None = None
    last_error: str | None = None
    current: Revision | None = None
    rejected: dict[str, Any] | None = None


@dataclass
class _Heal:
    count: int = 0
    last: float = 0.0


@dataclass
class _Queue:
    """Resource ids waiting for a pass, deduplicated, by trigger."""

    items: dict[ResourceId, Event] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, rid: ResourceId, trigger: Event) -> None:
        self.items.setdefault(rid, trigger)
        self.wake.set()

    def take(self) -> dict[ResourceId, Event]:
        items, self.items = self.items, {}
        self.wake.clear()
        return items


class Daemon:
    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.started = time.time()
        self.desired: DesiredState | None = None
        self.store: SqliteStore | None = None
        self.registry: Registry | None = None
        self.engine: Engine | None = None
        self.source: Source | None = None
        self.bundles: GitBundles | None = None
        """Fetcher of remote bundles; a load gets `bundles.session()`."""
        self.source_state = _SourceState(url=redact(settings.repo))
        self.queue = _Queue()
        self._sync = asyncio.Event()
        self._stop = asyncio.Event()
        self._rewatch = asyncio.Event()
        self._pass_lock = asyncio.Lock()
        self._due: dict[ResourceId, float] = {}
        self._heap: list[tuple[float, ResourceId]] = []
        self._blocked: set[ResourceId] = set()
        self._rescheduled = asyncio.Event()
        self._quiet: dict[ResourceId, float] = {}
        self._heals: dict[ResourceId, _Heal] = {}
        self._drift: dict[ResourceId, list[dict[str, Any]]] = {}
        self._last_pass: dict[str, Any] | None = None
        self._memo = ParseMemo()  # a new commit re-parses only the files it changed
        self._cache: Cache | None = None
        self._unsettled: set[ResourceId] = set()
        """Resources whose last pass left them failed or blocked."""
        self._last_converged: float | None = None
        self._warm: asyncio.Task[Any] | None = None
        self._kept = KeptRevisions(settings.state_dir / "last-good")
        self._kept_path: Path | None = None
        """The kept tree of the enforced revision: what a reload for secrets reads."""
        self._recovery: dict[str, Any] | None = None
        """The attempt to enforce the last good revision after a start, once made."""
        self._recovery_tried = False
        self._secrets = False
        """Whether the enforced revision's specs hold secrets (reloaded at each sync)."""
        self._secret_errors: list[str] | None = None
        self.metrics = Metrics(self._metrics_snapshot, version=__version__)

    # lifecycle

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or `stop()`); in-flight work finishes first."""
        from aiohttp import web
        from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

        from reconciler import server

        settings = self.settings
        webhook_secret = _read_secret(settings.webhook_secret_file, "webhook secret")
        api_token = _read_secret(settings.api_token_file, "API token")
        self.store = SqliteStore(settings.state_dir)  # takes the state dir's lock
        try:
            self.registry = Registry.discover(
                ProviderSettings(
                    roots=settings.roots,
                    state_dir=str(settings.state_dir),
                    allow_commands=settings.allow_commands,
                    secret_sources=settings.secret_sources,
                )
            )
            # the providers do not change while the daemon runs: fingerprint them once
            self._cache = Cache(settings.state_dir / "cache", self.registry.fingerprint())
            self.engine = Engine(
                self.registry,
                self.store,
                concurrency=settings.concurrency,
                allow_mass_prune=settings.allow_mass_prune,
                max_prune_share=settings.max_prune_share,
                heal_gate=self._heal_wait,
                telemetry=self.metrics,
            )
            self.source = self._make_source()
            self.bundles = self._make_bundles(self.source)
            # freshness is the store's: a restart does not make a stale source look fresh
            self.source_state.last_success = self.store.last_fetched(self.source_state.url)
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
            )
            self.port = http.port
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
            self.request_sync("start")
            try:
                await self._supervise()
            finally:
                scheduler.shutdown(wait=False)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
                await http.stop()
        finally:
            self.store.close()
            log.info("stopped")

    def stop(self) -> None:
        self._stop.set()

    async def _supervise(self) -> None:
        loops: list[Callable[[], Coroutine[Any, Any, None]]] = [
            self._sync_loop,
            self._work_loop,
            self._resync_loop,
            self._watch_loop,
        ]
        if hasattr(self.source, "changes"):
            loops.append(self._local_changes_loop)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(job(), name=job.__name__) for job in loops]
            await self._stop.wait()
            log.info(
                "stopping: waiting up to %.1f s for work in flight", self.settings.shutdown_timeout
            )
            try:
                async with asyncio.timeout(self.settings.shutdown_timeout):
                    await self._pass_lock.acquire()  # held from here on: no new pass starts
            except TimeoutError:
                log.warning(
                    "work still in flight after %.0f s: cancelling it",
                    self.settings.shutdown_timeout,
                )
            for task in tasks:
                task.cancel()

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

    def _remote(self) -> BundleSession | None:
        """The remote bundles' fetcher for one load: each ref resolved once in it."""
        return None if self.bundles is None else self.bundles.session()

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

    def request_sync(self, reason: str) -> None:
        log.debug("sync requested: %s", reason)
        self._sync.set()

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

    # the sync loop: fetch, load, converge a new revision

    async def _sync_loop(self) -> None:
        while True:
            await self._sync.wait()
            await asyncio.sleep(0.05)  # let a burst of triggers land, then one fetch
            self._sync.clear()
            if self._stop.is_set():
                return
            fetched, enforced = self.source_state.last_success, self.desired
            await self._sync_once()
            if self.source_state.last_success != fetched and self.store is not None:
                assert self.source_state.last_success is not None
                self.store.set_fetched(self.source_state.url, self.source_state.last_success)
                self.store.flush()
            if self.desired is None:
                await self._recover()
            elif self.desired is enforced:
                await self._reload_secrets()

    async def _sync_once(self) -> None:
        assert self.source is not None and self.registry is not None
        state = self.source_state
        state.last_fetch = time.time()
        try:
            revision = await self.source.fetch()
        except UntrustedRevision as exc:
            self._untrusted(exc)
            return
        except SourceError as exc:
            state.last_fetch_ok, state.last_error = False, str(exc)
            self.metrics.fetched(False)
            log.error("fetch failed: %s", exc)
            return
        state.last_fetch_ok, state.last_success = True, time.time()
        self.metrics.fetched(True)
        if state.rejected is not None and state.rejected.get("cause") == "signature":
            # the head passed verification (a signed tag, a new trusted key): judge it
            # again, even when it is the commit rejected before
            state.rejected = None
        if state.current is not None and revision.id == state.current.id and self.desired:
            state.last_error = None
            state.rejected = None  # the head is the enforced revision again
            return
        if state.rejected is not None and state.rejected["revision"] == revision.id:
            return  # already rejected: say it once, not at every poll
        cache = self._cache
        assert cache is not None
        try:
            desired = await asyncio.to_thread(
                functools.partial(
                    load,
                    revision.path,
                    self.registry,
                    revision=revision.id,
                    cache=cache,
                    memo=self._memo,
                    remote=self._remote(),
                )
            )
        except ManifestError as exc:
            if revision.id.startswith("dir-") and await asyncio.to_thread(_changed_since, revision):
                # a plain directory changed while it was read (an editor's truncate
                # then write): what failed is not the revision its id names; look again
                self.request_sync("local change during the load")
                return
            self._reject(revision, [str(issue) for issue in exc.issues])
            return
        if self.desired is None:
            gc.freeze()  # what start-up made lives to the end: spare the collector
        await self._apply_revision(revision, desired)

    async def _recover(self) -> None:
        """After a start whose first revision could not be used: enforce the last
        revision the store applied, from its kept tree; once per process. When it
        cannot be had, nothing is enforced and nothing pruned, and status says why."""
        if self._recovery_tried or self.store is None or self.registry is None:
            return
        self._recovery_tried = True
        rid = self.store.last_revision()
        if rid is None:
            error = "no revision was applied before from this state directory"
            self._recovery = {"revision": None, "at": time.time(), "ok": False, "error": error}
            log.warning("no revision to enforce: %s", error)
            return
        try:
            revision = await asyncio.to_thread(self._kept.revision, rid)
            desired = await asyncio.to_thread(
                functools.partial(
                    load,
                    revision.path,
                    self.registry,
                    revision=rid,
                    cache=self._cache,
                    remote=self._remote(),
                )
            )
        except (SourceError, ManifestError) as exc:
            error = (
                str(exc)
                if isinstance(exc, SourceError)
                else f"it no longer loads: {'; '.join(str(issue) for issue in exc.issues)}"
            )
            self._recovery = {"revision": rid, "at": time.time(), "ok": False, "error": error}
            log.error(
                "cannot enforce the last good revision %s: %s; nothing is enforced or "
                "pruned until a revision loads",
                rid,
                error,
                extra={"revision": rid},
            )
            return
        log.warning(
            "enforcing the last good revision %s, kept in the state directory, until the "
            "source offers a revision that loads",
            rid,
            extra={"revision": rid},
        )
        self._recovery = {"revision": rid, "at": time.time(), "ok": True, "error": None}
        gc.freeze()
        await self._apply_revision(revision, desired, recovered=True)

    async def _reload_secrets(self) -> None:
        """Load the enforced revision again when its specs hold secrets: a rotated
        secret file changes the digests in the specs of the resources using it, so
        they are applied as a new revision's changes are. A load that fails (a
        secret file removed) is reported once; what was loaded stays enforced."""
        current, engine = self.source_state.current, self.engine
        if not self._secrets or current is None or engine is None or self.registry is None:
            return
        path = self._kept_path if self._kept_path is not None else current.path
        try:
            desired = await asyncio.to_thread(
                functools.partial(
                    load,
                    path,
                    self.registry,
                    revision=current.id,
                    cache=self._cache,
                    memo=self._memo,  # only the files that resolved secrets are parsed
                    remote=self._remote(),
                )
            )
        except ManifestError as exc:
            errors = [str(issue) for issue in exc.issues]
            if errors != self._secret_errors:
                log.error(
                    "revision %s no longer loads (a secret it uses changed?); "
                    "what was loaded stays enforced:" + "\n  %s" * len(errors),
                    current.id,
                    *errors,
                    extra={"revision": current.id},
                )
            self._secret_errors = errors
            return
        self._secret_errors = None
        async with self._pass_lock:
            changed = engine.changed(desired)
            if not changed or self.source_state.current is not current:
                return  # nothing rotated, or a new revision came meanwhile
            report = await engine.converge(desired, only=changed)
            self.desired = desired
            self._after_pass(report)
        self._rewatch.set()
        log.info(
            "secrets of revision %s changed: %s",
            current.id,
            _summary(report),
            extra={"revision": current.id},
        )

    def _untrusted(self, exc: UntrustedRevision) -> None:
        """Fetched, but not signed by a trusted key: rejected like an invalid revision."""
        state = self.source_state
        state.last_fetch_ok, state.last_success = True, time.time()
        self.metrics.fetched(True)
        said = state.rejected
        if said and said["revision"] == exc.revision.id and said["errors"] == [exc.reason]:
            return  # already rejected: say it once, not at every poll
        self._reject(exc.revision, [exc.reason])
        assert self.source_state.rejected is not None
        self.source_state.rejected["cause"] = "signature"

    def _reject(self, revision: Revision, errors: list[str]) -> None:
        self.source_state.rejected = {"revision": revision.id, "at": time.time(), "errors": errors}
        self.source_state.last_error = f"revision {revision.id} rejected: {len(errors)} error(s)"
        self.metrics.rejected()
        log.error(
            # one argument per error: the log escapes what an error carries, not our lines
            "revision %s rejected, nothing of it applied:" + "\n  %s" * len(errors),
            revision.id,
            *errors,
            extra={"revision": revision.id},
        )

    async def _apply_revision(
        self, revision: Revision, desired: DesiredState, *, recovered: bool = False
    ) -> None:
        """Converge a loaded revision; `recovered`: the kept last good one, enforced
        while the source's newest stays rejected."""
        assert self.engine is not None and self.store is not None
        kept: asyncio.Task[Path | None] | None = None
        if not recovered:  # kept beside the pass, which it does not hold up
            kept = asyncio.create_task(self._keep(revision), name="keep revision")
        async with self._pass_lock:
            first = self.desired is None
            # after a start every resource is looked at; later only what changed
            only = None
            if not first:
                only = self.engine.changed(desired)
            try:
                report = await self.engine.converge(desired, only=only)
            except MassPruneRefused as exc:
                self._reject(revision, [str(exc)])
                if kept is not None:
                    await kept
                return
            self.desired = desired
            logs.REVISION.set(revision.id)
            self.source_state.current = revision
            if not recovered:
                self.source_state.rejected = None
                self.source_state.last_error = None
            self._after_pass(report, resync_all=first)
        self._kept_path = revision.path if recovered else (await kept if kept else None)
        self._secrets = await asyncio.to_thread(_holds_secrets, desired)
        self._secret_errors = None
        self._rewatch.set()
        if first:  # write every resource's metric lines now, not in the first scrape
            self._warm = asyncio.create_task(self.metrics.exposition(), name="metrics warm-up")
        log.info(
            "revision %s converged: %s",
            revision.id,
            _summary(report),
            extra={"revision": revision.id},
        )

    async def _keep(self, revision: Revision) -> Path | None:
        """Keep the tree of a revision about to be converged (sources.kept); a
        failure is a warning: only a restart with a rejected head would need it."""
        assert self.store is not None
        local = revision.id.startswith("dir-")
        try:
            return await asyncio.to_thread(
                functools.partial(
                    self._kept.keep,
                    revision,
                    immutable=not local,
                    expected=revision.id.removeprefix("dir-") if local else None,
                    keep=self.store.last_revision(),
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never fatal: only a later restart would need it
            log.warning(
                "revision %s is not kept for a restart: %s",
                revision.id,
                exc,
                extra={"revision": revision.id},
            )
            return None

    # drift: watch events and periodic resyncs become targeted passes

    async def _watch_loop(self) -> None:
        while True:
            self._rewatch.clear()
            tasks = []
            if self.desired is not None and self.registry is not None:
                for kind in self.registry:
                    specs = {  # drift: ignore is never checked, so never watched
                        rid: res.spec
                        for rid, res in self.desired.resources.items()
                        if res.kind == kind and res.policy.drift != "ignore"
                    }
                    try:
                        stream = self.registry[kind].watch(specs) if specs else None
                    except Exception as exc:
                        log.warning("%s watch failed: %s; relying on resync", kind, exc)
                        stream = None
                    if stream is not None:
                        tasks.append(asyncio.create_task(self._drain(stream), name=f"watch {kind}"))
            try:
                await self._rewatch.wait()
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _drain(self, stream: Any) -> None:
        try:
            async for rid in stream:
                quiet_until = self._quiet.get(rid, 0.0)
                if time.monotonic() < quiet_until:
                    # likely our own write: look again when the window closes rather
                    # than now, so a hand edit made meanwhile is still caught
                    self._schedule(rid, quiet_until)
                    continue
                self.queue.put(rid, Event.WATCH)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a watcher failing must not stop the daemon
            log.warning("watch stopped: %s; relying on periodic resync", exc)

    async def _resync_loop(self) -> None:
        """Queue each resource when its next look is due. `_due` holds the current
        time per resource; the heap may hold stale entries, skipped when popped."""
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                at, rid = heapq.heappop(self._heap)
                if self._due.get(rid) == at:
                    del self._due[rid]
                    self.queue.put(rid, Event.RESYNC)
            wait = self._heap[0][0] - now if self._heap else 1.0
            self._rescheduled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(wait, 0.01), 1.0)):
                    await self._rescheduled.wait()

    def _schedule(self, rid: ResourceId, at: float) -> None:
        self._due[rid] = at
        heapq.heappush(self._heap, (at, rid))
        if len(self._heap) > 4 * len(self._due) + 1024:  # drop stale entries now and then
            self._heap = [(t, r) for r, t in self._due.items()]
            heapq.heapify(self._heap)
        self._rescheduled.set()

    async def _work_loop(self) -> None:
        while True:
            await self.queue.wake.wait()
            await asyncio.sleep(0.02)  # coalesce a burst of events into one pass
            if self._stop.is_set():
                return
            batch = self.queue.take()
            if self.desired is None or self.engine is None:
                continue
            by_trigger: dict[Event, set[ResourceId]] = {}
            for rid, trigger in batch.items():
                if rid in self.desired.resources:
                    by_trigger.setdefault(trigger, set()).add(rid)
            logs.REVISION.set(self.desired.revision)  # for what the engine and providers log
            for trigger, rids in by_trigger.items():
                async with self._pass_lock:
                    report = await self.engine.converge(self.desired, only=rids, trigger=trigger)
                    self._after_pass(report)
                if any(
                    r.action in ("created", "healed") and r.id.startswith("Directory/")
                    for r in report.results.values()
                ):
                    self._rewatch.set()  # a recreated directory needs its watch again

    def _after_pass(self, report: Report, *, resync_all: bool = False) -> None:
        """Schedule the next look at every resource the pass touched (or, after a
        start, at all): a failure's backoff, a heal's backoff, or the resync period."""
        assert self.desired is not None
        now = time.monotonic()
        ids = self.desired.resources if resync_all else report.results
        for rid in ids:
            res = self.desired.resources.get(rid)
            if res is None:
                self._due.pop(rid, None)
                continue
            result = report.results.get(rid)
            if result is not None and result.action in ("created", "updated", "healed"):
                self._quiet[rid] = now + QUIET_AFTER_APPLY
            if result is not None and result.state is State.DRIFTED and result.plan:
                # a drift entry names its values for what they are: what the system
                # holds and what the repository says (a plan's before/after would
                # read as a history); sensitive values never leave the plan
                self._drift[rid] = [
                    {"field": c.field, "observed": c.before, "desired": c.after}
                    if not c.sensitive
                    else {"field": c.field, "sensitive": True}
                    for c in result.plan.changes
                ]
            else:
                self._drift.pop(rid, None)
            if result is not None and result.retry_in is not None:
                self._schedule(rid, now + result.retry_in)
            elif result is not None and result.state is State.FAILED:
                self._due.pop(rid, None)  # permanent: waits for a new spec
            elif res.policy.drift == "ignore" and (result is None or result.state is State.IN_SYNC):
                self._due.pop(rid, None)  # a resync would be a drift check: none under ignore
            else:
                self._schedule(rid, now + res.policy.resync * random.uniform(0.9, 1.1))
        for rid, result in report.results.items():
            if result.action in ("failed", "blocked") and rid in self.desired.resources:
                self._unsettled.add(rid)
            else:
                self._unsettled.discard(rid)
        if not self._unsettled:
            self._last_converged = time.time()
        self._last_pass = {
            "at": time.time(),
            "seconds": report.seconds,
            "summary": _summary(report),
        }
        self._wake_dependents(report)
        for rid, result in report.results.items():
            where = {"revision": report.revision, "resource": rid}
            if result.action == "drifted" and result.retry_in is not None:
                log.warning(
                    "%s drifted again; next heal in %.0f s (heal backoff)",
                    rid,
                    result.retry_in,
                    extra=where,
                )
            elif result.action == "drifted":
                fields = ", ".join(c.field for c in result.plan.changes) if result.plan else ""
                log.warning("%s drifted (%s); policy: not healed now", rid, fields, extra=where)
            elif result.action in ("failed", "blocked"):
                log.error("%s %s: %s", rid, result.action, result.error, extra=where)
            elif result.action not in ("unchanged", "suspended"):
                log.info("%s %s", rid, result.action, extra=where)

    def _wake_dependents(self, report: Report) -> None:
        """A resource that came into sync unblocks its Blocked dependents now,
        not at their next resync."""
        assert self.desired is not None
        for rid, result in report.results.items():
            if result.state is State.BLOCKED:
                self._blocked.add(rid)
            else:
                self._blocked.discard(rid)
        ready = {rid for rid, r in report.results.items() if r.state is State.IN_SYNC}
        for rid in list(self._blocked) if ready else ():
            if any(dep in ready for dep in self.desired.dependencies.get(rid, ())):
                self.queue.put(rid, Event.RESYNC)

    def _heal_wait(self, rid: ResourceId) -> float:
        """Backoff against fighting another writer: 0 to heal now, else seconds to
        wait. Heals of one resource within HEAL_RESET of each other wait 2 s, 4 s,
        ... up to 5 min."""
        now = time.monotonic()
        heal = self._heals.setdefault(rid, _Heal())
        if heal.count and now - heal.last > HEAL_RESET:
            heal.count = 0
        if heal.count:
            wait = heal.last + min(300.0, 2.0 * 2.0 ** min(heal.count - 1, 16)) - now
            if wait > 0:
                return wait
        heal.count += 1
        heal.last = now
        return 0.0

    # metrics

    def _metrics_snapshot(self) -> Snapshot:
        state = self.source_state
        inventory = self.store.inventory() if self.store is not None else {}
        return Snapshot(
            resources={rid: record.state for rid, record in inventory.items()},
            revision=None if self.desired is None else self.desired.revision,
            head_rejected=state.rejected is not None,
            last_fetch_success=state.last_success,
            interval=self.settings.interval,
            last_converged=self._last_converged,
            queue_depth=len(self.queue.items),
        )

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web

        body, content_type = await self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    # the server's backend

    def live(self) -> bool:
        return True

    def ready(self) -> tuple[bool, str]:
        if self.store is None:
            return False, "state store not open"
        if self.desired is None:
            return False, "no revision loaded yet"
        return True, "ok"

    def status(self) -> dict[str, Any]:
        state = self.source_state
        counts: dict[str, int] = {}
        if self.store is not None:
            for record in self.store.inventory().values():
                counts[record.state.value] = counts.get(record.state.value, 0) + 1
        return {
            "source": {"url": state.url, "ref": self.settings.ref, "path": self.settings.path},
            "revision": None
            if state.current is None
            else {"id": state.current.id, "summary": state.current.summary},
            "lastGoodRevision": None if self.desired is None else self.desired.revision,
            "lastFetch": {
                "at": state.last_fetch,
                "ok": state.last_fetch_ok,
                "lastSuccess": state.last_success,
            },
            "lastError": state.last_error,
            "rejected": state.rejected,
            "recovery": self._recovery,
            "lastPass": self._last_pass,
            "resources": counts,
            "instances": _instances_json(self.desired),
            "queue": len(self.queue.items),
            "startedAt": self.started,
        }

    def _resource_json(self, record: Any) -> dict[str, Any]:
        return {
            "id": record.id,
            "kind": record.kind,
            "name": record.name,
            "state": record.state.value,
            "lastTransition": record.last_transition,
            "lastError": record.last_error,
            "attempts": record.attempts,
            "createdByReconciler": record.created,
            "drift": self._drift.get(record.id),
            "instance": record.instance or None,
        }

    def resources(self, kind: str | None) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        return [
            self._resource_json(r)
            for r in sorted(self.store.inventory().values(), key=lambda r: r.id)
            if kind is None or r.kind == kind
        ]

    def resource(self, kind: str, name: str) -> dict[str, Any] | None:
        if self.store is None:
            return None
        record = self.store.inventory().get(f"{kind}/{name}")
        return None if record is None else self._resource_json(record)

    def events(
        self,
        *,
        resource: str | None,
        kind: str | None,
        since: float | None,
        limit: int,
        instance: str | None,
    ) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        history = self.store.history(resource, limit, kind=kind, since=since, instance=instance)
        return [t.to_json() for t in history]


def _instances_json(desired: DesiredState | None) -> list[dict[str, Any]]:
    """The bundle instances of the enforced revision, each with how many resources
    it made itself (not counting those of the instances nested in it)."""
    if desired is None or not desired.instances:
        return []
    made: dict[str, int] = {}
    for res in desired.resources.values():
        if res.instance:
            made[res.instance] = made.get(res.instance, 0) + 1
    return [
        {
            "id": inst.id,
            "source": redact(inst.source),
            "location": str(inst.location),
            "parent": inst.parent or None,
            "ref": inst.ref or None,
            "commit": inst.commit or None,
            "resources": made.get(inst.id, 0),
        }
        for inst in sorted(desired.instances.values(), key=lambda inst: inst.id)
    ]


def _changed_since(revision: Revision) -> bool:
    """Whether a plain directory's tree no longer has the digest its revision id
    names (`dir-<digest>`)."""
    return f"dir-{tree_digest(revision.path)[:12]}" != revision.id


def _holds_secrets(desired: DesiredState) -> bool:
    """Whether any spec holds a value resolved from a secret reference."""

    def holds(value: Any) -> bool:
        if isinstance(value, Sensitive):
            return True
        if isinstance(value, BaseModel):
            return any(holds(getattr(value, name)) for name in type(value).model_fields)
        if isinstance(value, dict):
            return any(holds(item) for item in value.values())
        if isinstance(value, list | tuple):
            return any(holds(item) for item in value)
        return False

    return any(holds(res.spec) for res in desired.resources.values())


def _summary(report: Report) -> str:
    counts: dict[str, int] = {}
    for result in report.results.values():
        counts[result.action] = counts.get(result.action, 0) + 1
    return ", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "nothing to do"
