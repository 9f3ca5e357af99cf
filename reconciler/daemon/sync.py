"""The daemon's sync: fetch the source, load a revision, converge it or reject it.

Triggers (the poll job, webhooks, `POST /api/v1/sync`, local directory changes)
only call `request`, so a burst of them coalesces into one fetch. A rejected
revision changes nothing: the last good desired state stays enforced.

What survives a restart (decision 0066): every converged revision's tree is kept
in the state directory (`sources.kept`), so a start whose first revision cannot be
used enforces the store's last revision again rather than nothing; the last
successful fetch is in the store, so freshness does not reset. A revision whose
specs resolved secrets is loaded again at every sync that brings nothing new, so a
rotated secret file re-applies the resources using it (decision 0067).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from reconciler import logs
from reconciler.engine import MassPruneRefused
from reconciler.manifests import Cache, ManifestError, ParseMemo, load, tree_digest
from reconciler.model import DesiredState, Sensitive
from reconciler.sources.base import Revision, SourceError
from reconciler.sources.kept import KeptRevisions
from reconciler.sources.signatures import UntrustedRevision

if TYPE_CHECKING:
    from reconciler.daemon.lifecycle import Daemon
    from reconciler.sources.bundles import BundleSession

log = logging.getLogger("reconciler.daemon")


@dataclass
class SourceState:
    """What the daemon knows of its source: the last fetch, the revision it
    enforces, the head it rejected."""

    url: str
    last_fetch: float | None = None
    last_fetch_ok: bool | None = None
    last_success: float | None = None
    last_error: str | None = None
    current: Revision | None = None
    rejected: dict[str, Any] | None = None


class Syncer:
    """Fetches, loads, and converges (or rejects) each new revision."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._requested = asyncio.Event()
        self.memo = ParseMemo()  # a new commit re-parses only the files it changed
        self.cache: Cache | None = None
        """The load cache; set once the providers are known (their fingerprint keys it)."""
        self._warm: asyncio.Task[Any] | None = None
        self._kept = KeptRevisions(daemon.settings.state_dir / "last-good")
        self._kept_path: Path | None = None
        """The kept tree of the enforced revision: what a reload for secrets reads."""
        self.recovery: dict[str, Any] | None = None
        """The attempt to enforce the last good revision after a start, once made."""
        self._recovery_tried = False
        self._secrets = False
        """Whether the enforced revision's specs hold secrets (reloaded at each sync)."""
        self._secret_errors: list[str] | None = None

    def request(self, reason: str) -> None:
        log.debug("sync requested: %s", reason)
        self._requested.set()

    def _remote(self) -> BundleSession | None:
        """The remote bundles' fetcher for one load: each ref resolved once in it."""
        bundles = self._daemon.bundles
        return None if bundles is None else bundles.session()

    async def _load(self, path: Path, revision: str, memo: ParseMemo | None) -> DesiredState:
        """`revision` at `path` loaded on a thread as this daemon loads: its
        providers and cache, its remote bundles, only its shard's part (0152)."""
        daemon = self._daemon
        assert daemon.registry is not None
        return await asyncio.to_thread(
            functools.partial(
                load,
                path,
                daemon.registry,
                revision=revision,
                cache=self.cache,
                memo=memo,
                remote=self._remote(),
                shard=daemon.settings.shard or "",
            )
        )

    # the sync loop: fetch, load, converge a new revision

    async def loop(self) -> None:
        daemon = self._daemon
        state = daemon.source_state
        while True:
            await self._requested.wait()
            await asyncio.sleep(0.05)  # let a burst of triggers land, then one fetch
            self._requested.clear()
            if daemon.stopping:
                return
            fetched, enforced = state.last_success, daemon.desired
            await self._sync_once()
            if state.last_success != fetched and daemon.store is not None:
                assert state.last_success is not None
                daemon.store.set_fetched(state.url, state.last_success)
                await daemon.store.flush()
            if daemon.desired is None:
                await self._recover()
            elif daemon.desired is enforced:
                await self._reload_secrets()

    async def _sync_once(self) -> None:
        daemon = self._daemon
        assert daemon.source is not None and daemon.registry is not None
        state = daemon.source_state
        state.last_fetch = time.time()
        try:
            revision = await daemon.source.fetch()
        except UntrustedRevision as exc:
            self._untrusted(exc)
            return
        except SourceError as exc:
            state.last_fetch_ok, state.last_error = False, str(exc)
            daemon.metrics.fetched(False)
            log.error("fetch failed: %s", exc)
            daemon.announcer.fetched(False, str(exc))
            return
        state.last_fetch_ok, state.last_success = True, time.time()
        daemon.metrics.fetched(True)
        daemon.announcer.fetched(True)
        if state.rejected is not None and state.rejected.get("cause") == "signature":
            # the head passed verification (a signed tag, a new trusted key): judge it
            # again, even when it is the commit rejected before
            state.rejected = None
        if state.current is not None and revision.id == state.current.id and daemon.desired:
            state.last_error = None
            state.rejected = None  # the head is the enforced revision again
            return
        if state.rejected is not None and state.rejected["revision"] == revision.id:
            return  # already rejected: say it once, not at every poll
        try:
            desired = await self._load(revision.path, revision.id, self.memo)
        except ManifestError as exc:
            if revision.id.startswith("dir-") and await asyncio.to_thread(_changed_since, revision):
                # a plain directory changed while it was read (an editor's truncate
                # then write): what failed is not the revision its id names; look again
                self.request("local change during the load")
                return
            self._reject(revision, [str(issue) for issue in exc.issues])
            return
        if daemon.desired is None:
            gc.freeze()  # what start-up made lives to the end: spare the collector
        await self._apply_revision(revision, desired)

    async def _recover(self) -> None:
        """After a start whose first revision could not be used: enforce the last
        revision the store applied, from its kept tree; once per process. When it
        cannot be had, nothing is enforced and nothing pruned, and status says why."""
        daemon = self._daemon
        if self._recovery_tried or daemon.store is None or daemon.registry is None:
            return
        self._recovery_tried = True
        rid = await daemon.store.last_revision()
        if rid is None:
            error = "no revision was applied before from this state directory"
            self.recovery = {"revision": None, "at": time.time(), "ok": False, "error": error}
            log.warning("no revision to enforce: %s", error)
            return
        try:
            revision = await asyncio.to_thread(self._kept.revision, rid)
            desired = await self._load(revision.path, rid, None)
        except (SourceError, ManifestError) as exc:
            error = (
                str(exc)
                if isinstance(exc, SourceError)
                else f"it no longer loads: {'; '.join(str(issue) for issue in exc.issues)}"
            )
            self.recovery = {"revision": rid, "at": time.time(), "ok": False, "error": error}
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
        self.recovery = {"revision": rid, "at": time.time(), "ok": True, "error": None}
        gc.freeze()
        await self._apply_revision(revision, desired, recovered=True)

    async def _reload_secrets(self) -> None:
        """Load the enforced revision again when its specs hold secrets: a rotated
        secret file changes the digests in the specs of the resources using it, so
        they are applied as a new revision's changes are. A load that fails (a
        secret file removed) is reported once; what was loaded stays enforced."""
        daemon = self._daemon
        current, engine = daemon.source_state.current, daemon.engine
        if not self._secrets or current is None or engine is None or daemon.registry is None:
            return
        path = self._kept_path if self._kept_path is not None else current.path
        try:
            # the memo: only the files that resolved secrets are parsed
            desired = await self._load(path, current.id, self.memo)
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
        async with daemon.claims.revision():
            changed = engine.changed(desired)
            if not changed or daemon.source_state.current is not current:
                return  # nothing rotated, or a new revision came meanwhile
            claim = daemon.claims.converging(desired, changed | engine.refreshers(desired, changed))
            try:
                report = await engine.converge(desired, only=changed)
            finally:
                daemon.claims.end(claim)
            daemon.desired = desired
            await daemon.scheduler.after_pass(report)
            await daemon.scheduler.log_results(report)
        daemon.scheduler.rewatch.set()
        log.info(
            "secrets of revision %s changed: %s",
            current.id,
            report.summary(),
            extra={"revision": current.id},
        )

    def _untrusted(self, exc: UntrustedRevision) -> None:
        """Fetched, but not signed by a trusted key: rejected like an invalid revision."""
        state = self._daemon.source_state
        state.last_fetch_ok, state.last_success = True, time.time()
        self._daemon.metrics.fetched(True)
        self._daemon.announcer.fetched(True)
        said = state.rejected
        if said and said["revision"] == exc.revision.id and said["errors"] == [exc.reason]:
            return  # already rejected: say it once, not at every poll
        self._reject(exc.revision, [exc.reason], cause="signature")
        assert state.rejected is not None
        state.rejected["cause"] = "signature"

    def _reject(self, revision: Revision, errors: list[str], *, cause: str = "invalid") -> None:
        state = self._daemon.source_state
        state.rejected = {"revision": revision.id, "at": time.time(), "errors": errors}
        state.last_error = f"revision {revision.id} rejected: {len(errors)} error(s)"
        self._daemon.metrics.rejected()
        self._daemon.announcer.rejected(revision, errors, cause)
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
        daemon = self._daemon
        assert daemon.engine is not None and daemon.store is not None
        kept: asyncio.Task[Path | None] | None = None
        if not recovered:  # kept beside the pass, which it does not hold up
            kept = asyncio.create_task(self._keep(revision), name="keep revision")
        async with daemon.claims.revision():
            first = daemon.desired is None
            # after a start every resource is looked at; later only what changed
            only = None
            if not first:
                only = daemon.engine.changed(desired)
            ids = set(desired.resources) if only is None else only
            claim = daemon.claims.converging(desired, ids | daemon.engine.refreshers(desired, ids))
            try:  # started before the next await: converge refuses before any drift pass
                report = await daemon.engine.converge(desired, only=only)
            except MassPruneRefused as exc:
                self._reject(revision, [str(exc)], cause="mass-prune")
                if kept is not None:
                    await kept
                return
            finally:
                daemon.claims.end(claim)
            daemon.desired = desired
            logs.REVISION.set(revision.id)
            daemon.source_state.current = revision
            if not recovered:
                daemon.source_state.rejected = None
                daemon.source_state.last_error = None
            await daemon.scheduler.after_pass(report, resync_all=first)
            daemon.announcer.applied(revision, report, recovered=recovered)
            await daemon.scheduler.log_results(report)
        self._kept_path = revision.path if recovered else (await kept if kept else None)
        self._secrets = await asyncio.to_thread(_holds_secrets, desired)
        self._secret_errors = None
        daemon.scheduler.rewatch.set()
        if first:
            # what the first pass made (records, rows, metric lines) mostly lives
            # to the end too: keep it out of the full collections (decision 0129)
            gc.freeze()
            # write every resource's metric lines now, not in the first scrape
            self._warm = asyncio.create_task(daemon.metrics.exposition(), name="metrics warm-up")
        log.info(
            "revision %s converged: %s",
            revision.id,
            report.summary(),
            extra={"revision": revision.id},
        )

    async def _keep(self, revision: Revision) -> Path | None:
        """Keep the tree of a revision about to be converged (sources.kept); a
        failure is a warning: only a restart with a rejected head would need it."""
        store = self._daemon.store
        assert store is not None
        local = revision.id.startswith("dir-")
        try:
            last = await store.last_revision()
            return await asyncio.to_thread(
                functools.partial(
                    self._kept.keep,
                    revision,
                    immutable=not local,
                    expected=revision.id.removeprefix("dir-") if local else None,
                    keep=last,
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
