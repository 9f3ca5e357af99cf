"""The git source: follows one ref of a remote repository and hands the daemon an
immutable export of the configured path at each commit.

Cache layout under `cache_dir` (one GitSource per cache_dir):

    repo/                  bare repository; fetched refs live under refs/reconciler/
    trees/<sha>/<path>     the configured path exported at that commit, never modified
    trees/.<sha>.path      which path trees/<sha> holds (written once it is complete)
    .lock                  serializes fetches across threads and processes

This module is the fetch flow: open (or rebuild) the cache repository, resolve the
ref against the remote, fetch it, verify it. How git is run and with which
credentials is `gitaccess.py`; the export of a commit's tree is `gitexport.py`.
All git work runs in a worker thread (`asyncio.to_thread`) through GitPython's
command wrapper.

With a `SignaturePolicy`, the object the ref names (the commit, or the annotated
tag) is verified after the fetch and before the export (signatures.py); an
untrusted one raises `UntrustedRevision` and is never exported.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git
from git.repo.fun import is_git_dir

from reconciler.sources.base import Revision, SourceError, redact
from reconciler.sources.gitaccess import _GitFailure
from reconciler.sources.gitaccess import _split_credentials as _split_credentials
from reconciler.sources.gitexport import GitExports, extract_tar, normalize_path
from reconciler.sources.signatures import SignaturePolicy, UntrustedRevision, Verifier

__all__ = ["GitSource", "extract_tar", "normalize_path"]

log = logging.getLogger(__name__)

_PRIVATE = "refs/reconciler"
"""Our fetched refs; nothing else writes here, so forced updates are safe."""
_PINNED = "refs/reconciler-pinned/commit"
"""Keeps a commit fetched by SHA reachable (and safe from gc)."""
_HEX = re.compile(r"[0-9a-fA-F]{4,40}")
_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True, slots=True)
class _Target:
    """What to fetch for the configured ref."""

    remote_ref: str | None
    """Full remote ref name (refs/heads/main), "HEAD", or None for a commit SHA."""
    local_ref: str
    advertised: str | None = None
    """The object id the remote advertised for remote_ref, if known."""


class GitSource(GitExports):
    """A `Source` following `ref` (branch, tag, commit SHA, or None for the remote
    HEAD) of the repository at `url`, exporting `path` of each commit."""

    def __init__(
        self,
        url: str,
        *,
        ref: str | None,
        path: str,
        cache_dir: Path,
        ssh_key: Path | None = None,
        known_hosts: Path | None = None,
        insecure_ignore_host_key: bool = False,
        token_file: Path | None = None,
        shallow: bool = True,
        timeout: float = 300.0,
        keep_trees: int = 3,
        signatures: SignaturePolicy | None = None,
    ) -> None:
        if not url or url.startswith("-"):
            raise ValueError(f"invalid git url {redact(url)!r}")
        self._remote, basic = _split_credentials(url)
        if basic is not None and token_file is not None:
            raise ValueError("git url carries credentials and token_file is set: use one")
        self._basic_credentials = basic
        self.url = redact(url)
        self.ref = _normalize_ref(ref)
        self.path = normalize_path(path)
        self.cache_dir = cache_dir
        self.ssh_key = ssh_key
        self.known_hosts = known_hosts
        self.insecure_ignore_host_key = insecure_ignore_host_key
        self.token_file = token_file
        self.shallow = shallow
        self.timeout = timeout
        self.keep_trees = max(1, keep_trees)
        self._verifier = Verifier(signatures, cache_dir) if signatures is not None else None

    def __repr__(self) -> str:
        return f"GitSource(url={self.url!r}, ref={self.ref!r}, path={self.path!r})"

    @property
    def signatures(self) -> SignaturePolicy | None:
        """The policy commits are verified against (None: not verified)."""
        return self._verifier.policy if self._verifier is not None else None

    async def fetch(self) -> Revision:
        """Fetch the ref and export its tree; SourceError on any failure."""
        return await asyncio.to_thread(self.fetch_sync)

    # ------------------------------------------------------------------ fetch flow

    @property
    def _repo_dir(self) -> Path:
        return self.cache_dir / "repo"

    def fetch_sync(self) -> Revision:
        """`fetch` in the calling thread (blocking: network and disk)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.cache_dir / ".lock"):
            env = self._network_env()
            try:
                try:
                    return self._attempt(env)
                except _GitFailure as failure:
                    if self._cache_is_healthy():
                        raise
                    # A broken cache must not wedge the source: start over, once.
                    log.warning(
                        "git cache %s is corrupted (%s); cloning again from %s",
                        self._repo_dir,
                        self._scrub(str(failure), env),
                        self.url,
                    )
                    self._discard_repo()
                return self._attempt(env)
            except _GitFailure as failure:
                raise SourceError(self._scrub(str(failure), env)) from None
            except UntrustedRevision:
                raise  # names a commit and a key, nothing secret
            except SourceError as error:
                raise SourceError(self._scrub(str(error), env)) from None

    def _attempt(self, env: Mapping[str, str]) -> Revision:
        cmd, fresh = self._open_repo()
        op = "clone" if fresh else "fetch"
        target = self._resolve_target(cmd, env)
        if target.remote_ref is None:
            sha = self._fetch_commit(cmd, env, op)
        else:
            self._fetch_ref(cmd, env, op, target)
            sha = self._peel_commit(cmd, target.local_ref)
        if self._verifier is not None:
            self._verify(cmd, target, sha)
        tree = self._export(cmd, sha)
        summary = self._summary(cmd, sha)
        self._prune_trees(keep=self._export_name(sha))
        log.debug("git %s: %s at %s", self.url, self.ref or "HEAD", sha)
        return Revision(id=sha, path=tree, summary=summary)

    # ------------------------------------------------------------------ repository

    def _open_repo(self) -> tuple[git.Git, bool]:
        """A command wrapper bound to the bare cache repo; True if just created."""
        repo_dir = self._repo_dir
        fresh = False
        if repo_dir.exists() and not is_git_dir(repo_dir):
            log.warning("git cache %s is not a repository; cloning again", repo_dir)
            self._discard_repo()
        if not repo_dir.exists():
            # Initialise beside it, then rename: a half-made repo is never seen.
            tmp = self.cache_dir / f".repo-{uuid.uuid4().hex}"
            try:
                init = git.Git()
                init.update_environment(GIT_DIR=str(tmp))
                self._run(init, "clone", ["init", "--quiet", "--bare"])
                os.rename(tmp, repo_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            fresh = True
        cmd = git.Git(repo_dir)
        # An explicit GIT_DIR: with a damaged repo, git must fail rather than
        # discover some enclosing repository and work on that one.
        cmd.update_environment(GIT_DIR=str(repo_dir))
        return cmd, fresh

    def _discard_repo(self) -> None:
        if self._repo_dir.is_dir() and not self._repo_dir.is_symlink():
            shutil.rmtree(self._repo_dir)
        else:
            self._repo_dir.unlink(missing_ok=True)

    def _cache_is_healthy(self) -> bool:
        """After a failure: was it the cache (False) or the remote/network (True)?"""
        if not self._repo_dir.exists():
            return True
        cmd = git.Git(self._repo_dir)
        cmd.update_environment(GIT_DIR=str(self._repo_dir))
        try:
            self._run(cmd, "check", ["rev-parse", "--git-dir"])
            self._run(cmd, "check", ["fsck", "--connectivity-only", "--no-progress"])
        except _GitFailure:
            return False
        return True

    # ------------------------------------------------------------------ resolve

    def _resolve_target(self, cmd: git.Git, env: Mapping[str, str]) -> _Target:
        if self.ref is None:
            return self._resolve_remote_head(cmd, env)
        ref = self.ref
        if _SHA.fullmatch(ref.lower()) and self._local_commit(cmd, ref.lower()):
            # A full commit id we already hold cannot change: no need to ask the
            # remote. (Shorter hex strings could still be branch names.)
            return _Target(None, _PINNED)
        candidates = [ref] if ref.startswith("refs/") else [f"refs/tags/{ref}", f"refs/heads/{ref}"]
        out = self._run(
            cmd,
            "resolve",
            ["ls-remote", "--", self._remote, *candidates],
            env=env,
            what=f"ref {ref!r}",
        )
        advertised = dict(_ls_remote_lines(out))
        found = [name for name in candidates if name in advertised]
        if len(found) > 1:
            # git's own rule (rev-parse, fetch) prefers the tag; say so.
            log.warning("git ref %r is both a tag and a branch on %s; using the tag", ref, self.url)
        if found:
            name = found[0]
            return _Target(name, _local_ref(name), advertised[name])
        if _HEX.fullmatch(ref):
            return _Target(None, _PINNED)
        previously = [name for name in candidates if self._local_sha(cmd, _local_ref(name))]
        if previously:
            raise SourceError(
                f"ref {ref!r} no longer exists on {self.url} "
                f"({previously[0]} was deleted or renamed)"
            )
        raise SourceError(
            f"ref {ref!r} not found on {self.url}: no branch or tag of that name, "
            "and not a commit SHA"
        )

    def _resolve_remote_head(self, cmd: git.Git, env: Mapping[str, str]) -> _Target:
        out = self._run(
            cmd,
            "resolve",
            ["ls-remote", "--symref", "--", self._remote, "HEAD"],
            env=env,
            what="the remote HEAD",
        )
        symref = None
        sha = None
        for line in out.splitlines():
            left, _, name = line.partition("\t")
            if name != "HEAD":
                continue
            if left.startswith("ref: "):
                symref = left.removeprefix("ref: ").strip()
            else:
                sha = left.strip()
        if sha is None:
            raise SourceError(f"remote HEAD of {self.url} points to no commit (empty repository?)")
        if symref is not None and symref.startswith("refs/"):
            return _Target(symref, _local_ref(symref), sha)
        # Servers that do not advertise the symref: fetch HEAD itself.
        return _Target("HEAD", f"{_PRIVATE}/HEAD", sha)

    # ------------------------------------------------------------------ fetch

    def _fetch_ref(self, cmd: git.Git, env: Mapping[str, str], op: str, target: _Target) -> None:
        assert target.remote_ref is not None
        if (
            target.advertised is not None
            and self._local_sha(cmd, target.local_ref) == target.advertised
        ):
            return  # unchanged remote: nothing to download
        # The forced refspec follows force-pushes; the private namespace means no
        # other ref of ours can be clobbered.
        refspec = f"+{target.remote_ref}:{target.local_ref}"
        self._git_fetch(cmd, env, op, [refspec], what=f"ref {self.ref or 'HEAD'!r}")

    def _fetch_commit(self, cmd: git.Git, env: Mapping[str, str], op: str) -> str:
        """The configured ref is a (possibly abbreviated) commit SHA."""
        assert self.ref is not None
        wanted = self.ref.lower()
        # A commit never changes: if we have it, the remote need not be asked.
        sha = self._local_commit(cmd, wanted)
        if sha is None and _SHA.fullmatch(wanted):
            try:
                self._git_fetch(cmd, env, op, [f"+{wanted}:{_PINNED}"], what=f"commit {wanted}")
                sha = self._local_commit(cmd, wanted)
            except _GitFailure as failure:
                # Protocol v0 servers refuse wants of commits that are not a ref tip.
                log.info("fetch of commit %s by id failed (%s); fetching all refs", wanted, failure)
        if sha is None:
            refspecs = [f"+refs/heads/*:{_PRIVATE}/heads/*", f"+refs/tags/*:{_PRIVATE}/tags/*"]
            self._git_fetch(cmd, env, op, refspecs, what="all refs", full=True)
            sha = self._local_commit(cmd, wanted)
        if sha is None:
            raise SourceError(
                f"ref {self.ref!r} not found on {self.url}: no branch, tag or commit of that name"
            )
        self._run(cmd, "fetch", ["update-ref", _PINNED, sha])
        return sha

    def _git_fetch(
        self,
        cmd: git.Git,
        env: Mapping[str, str],
        op: str,
        refspecs: list[str],
        *,
        what: str,
        full: bool = False,
    ) -> None:
        shallow_repo = (self._repo_dir / "shallow").exists()
        if self.shallow and not full:
            depth = ["--depth=1"]
        elif shallow_repo:
            depth = ["--unshallow"]
        else:
            depth = []
        args = [
            "-c",
            "gc.autoDetach=false",  # gc inside our lock and timeout, not behind them
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            *depth,
            "--",
            self._remote,
            *refspecs,
        ]
        self._run(cmd, op, args, env=env, what=what)

    def _local_sha(self, cmd: git.Git, ref: str) -> str | None:
        try:
            return self._run(cmd, "resolve", ["rev-parse", "--verify", "--quiet", ref]) or None
        except _GitFailure:
            return None

    def _local_commit(self, cmd: git.Git, rev: str) -> str | None:
        return self._local_sha(cmd, f"{rev}^{{commit}}")

    def _peel_commit(self, cmd: git.Git, local_ref: str) -> str:
        sha = self._local_commit(cmd, local_ref)
        if sha is not None:
            return sha
        # Fails (a damaged cache) when the object is missing; names the type when
        # the ref really points to a tree or blob.
        kind = self._run(cmd, "resolve", ["cat-file", "-t", f"{local_ref}^{{}}"])
        raise SourceError(f"ref {self.ref!r} on {self.url} points to a {kind}, not a commit")

    # ------------------------------------------------------------------ verify

    def _verify(self, cmd: git.Git, target: _Target, sha: str) -> None:
        """UntrustedRevision unless what the ref names is signed by a trusted key: an
        annotated tag's own signature, else the commit's."""
        assert self._verifier is not None
        obj, kind, tag = sha, "commit", None
        if target.remote_ref is not None:
            obj = self._run(cmd, "verify", ["rev-parse", "--verify", target.local_ref])
            kind = self._run(cmd, "verify", ["cat-file", "-t", obj]).strip()
        if kind == "tag":
            assert target.remote_ref is not None
            if target.remote_ref.startswith("refs/tags/"):
                tag = target.remote_ref.removeprefix("refs/tags/")
            name = f"tag {tag or target.remote_ref} (object {obj}, commit {sha})"
        else:
            kind, name = "commit", f"commit {sha}"
        reason = self._verifier.verify(self._repo_dir, obj, kind=kind, name=name, tag=tag)
        if reason is not None:
            # Never exported: the path is where the tree would have gone.
            revision = Revision(id=sha, path=self._trees_dir / sha, summary=self._summary(cmd, sha))
            raise UntrustedRevision(revision, reason)


# ---------------------------------------------------------------------- helpers


def _normalize_ref(ref: str | None) -> str | None:
    if ref is None:
        return None
    ref = ref.strip()
    if not ref or ref == "HEAD":
        return None
    if ref.startswith("-") or any(c in ref for c in " \t\n~^:?*[\\") or ".." in ref:
        raise ValueError(f"invalid git ref {ref!r}")
    return ref


def _local_ref(remote_ref: str) -> str:
    return f"{_PRIVATE}/{remote_ref.removeprefix('refs/')}"


def _ls_remote_lines(out: str) -> Iterator[tuple[str, str]]:
    """(ref name, object id) pairs of `git ls-remote` output."""
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name and not sha.startswith("ref:"):
            yield name.strip(), sha.strip()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock: one fetch at a time per cache, across threads and processes."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
