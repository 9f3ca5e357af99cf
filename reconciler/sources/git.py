"""The git source: follows one ref of a remote repository and hands the daemon an
immutable export of the configured path at each commit.

Cache layout under `cache_dir` (one GitSource per cache_dir):

    repo/                  bare repository; fetched refs live under refs/reconciler/
    trees/<sha>/<path>     the configured path exported at that commit, never modified
    trees/.<sha>.path      which path trees/<sha> holds (written once it is complete)
    .lock                  serializes fetches across threads and processes

All git work runs in a worker thread (`asyncio.to_thread`) through GitPython's
command wrapper. Credentials come from files and reach git only through the
environment of its subprocess (GIT_SSH_COMMAND, GIT_CONFIG_* for an HTTP header), so
they never appear in argv, in the cached repository's config, in logs or in errors.

With a `SignaturePolicy`, the object the ref names (the commit, or the annotated
tag) is verified after the fetch and before the export (signatures.py); an
untrusted one raises `UntrustedRevision` and is never exported.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import logging
import os
import re
import shlex
import shutil
import stat
import tarfile
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import unquote, urlsplit, urlunsplit

import git
from git.repo.fun import is_git_dir

from reconciler.sources.base import Revision, SourceError, redact
from reconciler.sources.signatures import SignaturePolicy, UntrustedRevision, Verifier

__all__ = ["GitSource"]

log = logging.getLogger(__name__)

_PRIVATE = "refs/reconciler"
"""Our fetched refs; nothing else writes here, so forced updates are safe."""
_PINNED = "refs/reconciler-pinned/commit"
"""Keeps a commit fetched by SHA reachable (and safe from gc)."""
_SUMMARY_MAX = 200
_HEX = re.compile(r"[0-9a-fA-F]{4,40}")
_SHA = re.compile(r"[0-9a-f]{40}")

# Lines git (or ssh) prints around the real reason of a failure; they say nothing.
_BOILERPLATE = (
    "fatal: could not read from remote repository",
    "please make sure you have the correct access rights",
    "and the repository exists",
    "hint:",
)


class _GitFailure(Exception):
    """A git command failed. The message is concise and not yet scrubbed."""


@dataclass(frozen=True, slots=True)
class _Target:
    """What to fetch for the configured ref."""

    remote_ref: str | None
    """Full remote ref name (refs/heads/main), "HEAD", or None for a commit SHA."""
    local_ref: str
    advertised: str | None = None
    """The object id the remote advertised for remote_ref, if known."""


class GitSource:
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

    @property
    def _trees_dir(self) -> Path:
        return self.cache_dir / "trees"

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

    # ------------------------------------------------------------------ export

    def _export_name(self, sha: str) -> str:
        """The directory under trees/ holding the export of `sha` (the remote
        bundles' fetcher keys it by path too)."""
        return sha

    def _export(self, cmd: git.Git, sha: str) -> Path:
        """trees/<sha>/<path>, exported once and reused while it exists."""
        trees = self._trees_dir
        trees.mkdir(parents=True, exist_ok=True)
        name = self._export_name(sha)
        final = trees / name
        marker = trees / f".{name}.path"
        target = final / self.path if self.path else final
        if final.is_dir() and _read_text(marker) == self.path:
            os.utime(final)  # most recently used: last to be pruned
            return target
        self._check_path(cmd, sha)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha[:12]}-", dir=trees))
        try:
            with tempfile.TemporaryFile(dir=trees) as archive:
                paths = [self.path] if self.path else []
                self._run(
                    cmd,
                    "export",
                    ["archive", "--format=tar", sha, "--", *paths],
                    output=archive,
                    what=f"commit {sha}",
                )
                archive.seek(0)
                with tarfile.open(fileobj=archive, mode="r:") as tar:
                    extract_tar(tar, tmp)
            (tmp / self.path).mkdir(parents=True, exist_ok=True)
            marker.unlink(missing_ok=True)
            if final.exists():
                # Exported before for another path (config changed): replace it.
                old = trees / f".old-{uuid.uuid4().hex}"
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
            _write_atomically(marker, self.path)
        except (OSError, tarfile.TarError) as error:
            raise _GitFailure(f"export of commit {sha} failed: {error}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _check_path(self, cmd: git.Git, sha: str) -> None:
        if not self.path:
            return
        out = self._run(cmd, "export", ["ls-tree", sha, "--", self.path], what=f"commit {sha}")
        entries = [line.split("\t", 1) for line in out.splitlines() if "\t" in line]
        kinds = [meta.split()[1] for meta, name in entries if name == self.path]
        if not kinds:
            raise SourceError(f"path {self.path!r} does not exist at commit {sha} of {self.url}")
        if kinds[0] != "tree":
            raise SourceError(
                f"path {self.path!r} at commit {sha} of {self.url} is a {kinds[0]}, not a directory"
            )

    def _summary(self, cmd: git.Git, sha: str) -> str:
        message = self._run(cmd, "export", ["log", "-1", "--format=%B", sha], what=f"commit {sha}")
        first = message.strip().splitlines()[0] if message.strip() else ""
        return first.strip()[:_SUMMARY_MAX]

    def _prune_trees(self, keep: str) -> None:
        """Keep the newest `keep_trees` exports (and `keep`); drop leftovers of crashes."""
        trees = self._trees_dir
        exports: list[Path] = []
        for entry in trees.iterdir():
            if entry.name.startswith((".tmp-", ".old-")):
                # We hold the lock, so these belong to an interrupted earlier fetch.
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_dir() and not entry.name.startswith("."):
                exports.append(entry)
        exports.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        survivors = {keep, *(p.name for p in exports[: self.keep_trees])}
        for entry in exports:
            if entry.name not in survivors:
                (trees / f".{entry.name}.path").unlink(missing_ok=True)
                shutil.rmtree(entry, ignore_errors=True)

    # ------------------------------------------------------------------ running git

    def _run(
        self,
        cmd: git.Git,
        op: str,
        args: list[str],
        *,
        env: Mapping[str, str] | None = None,
        output: IO[bytes] | None = None,
        what: str | None = None,
    ) -> str:
        """Run git; return stdout; raise _GitFailure with a short reason.

        `env` (credentials) is given only to commands that talk to the remote; those
        also get the timeout.
        """
        executable = git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git"
        network = env is not None
        try:
            status, stdout, stderr = cmd.execute(
                [str(executable), *args],
                with_extended_output=True,
                with_exceptions=False,
                env=env,
                kill_after_timeout=self.timeout if network else None,
                output_stream=output,
            )
        except git.exc.GitCommandNotFound:
            raise _GitFailure(f"git {op} failed: the git executable was not found") from None
        if status == 0:
            return stdout if isinstance(stdout, str) else ""
        subject = f" of {what}" if what else ""
        source = f" from {self.url}" if network else ""
        if str(stderr).startswith("Timeout:"):
            reason = f"timed out after {self.timeout:g} s"
        else:
            reason = _stderr_reason(str(stderr)) or f"exit status {status}"
        raise _GitFailure(f"git {op}{subject}{source} failed: {reason}")

    def _network_env(self) -> dict[str, str]:
        """Environment for git commands that reach the remote (read at each fetch)."""
        env = {
            "GIT_TERMINAL_PROMPT": "0",
            # Any prompt gets an empty answer instead of blocking on a terminal.
            "GIT_ASKPASS": shutil.which("true") or "/bin/true",
            "SSH_ASKPASS": shutil.which("true") or "/bin/true",
            "GCM_INTERACTIVE": "never",
            "GIT_SSH_COMMAND": self._ssh_command(),
        }
        header = self._auth_header()
        if header is not None:
            # Appended after any GIT_CONFIG_* the operator already set.
            try:
                index = int(os.environ.get("GIT_CONFIG_COUNT", "0"))
            except ValueError:
                index = 0
            env["GIT_CONFIG_COUNT"] = str(index + 1)
            env[f"GIT_CONFIG_KEY_{index}"] = "http.extraHeader"
            env[f"GIT_CONFIG_VALUE_{index}"] = header
        return env

    def _ssh_command(self) -> str:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(self.timeout))}"]
        if self.ssh_key is not None:
            if not self.ssh_key.is_file():
                raise SourceError(f"ssh key file {self.ssh_key} does not exist")
            argv += ["-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes"]
        if self.insecure_ignore_host_key:
            argv += [
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
            ]
        else:
            argv += ["-o", "StrictHostKeyChecking=yes"]
            if self.known_hosts is not None:
                if not self.known_hosts.is_file():
                    raise SourceError(f"known_hosts file {self.known_hosts} does not exist")
                argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return " ".join(shlex.quote(arg) for arg in argv)

    def _auth_header(self) -> str | None:
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as error:
                raise SourceError(
                    f"cannot read token file {self.token_file}: {error.strerror}"
                ) from None
            if not token:
                raise SourceError(f"token file {self.token_file} is empty")
            return f"Authorization: Bearer {token}"
        if self._basic_credentials is not None:
            encoded = base64.b64encode(self._basic_credentials.encode()).decode()
            return f"Authorization: Basic {encoded}"
        return None

    def _scrub(self, message: str, env: Mapping[str, str]) -> str:
        """redact() plus removal of any credential we hold, wherever it turned up."""
        secrets: list[str] = []
        for key, value in env.items():
            if key.startswith("GIT_CONFIG_VALUE_") and value.startswith("Authorization:"):
                secrets.append(value.split(" ", 2)[-1])
        if self._basic_credentials is not None:
            secrets += [self._basic_credentials, *self._basic_credentials.split(":", 1)[1:]]
        message = redact(message)
        for secret in secrets:
            if len(secret) >= 4:
                message = message.replace(secret, "***")
        return message


# ---------------------------------------------------------------------- helpers


def _split_credentials(url: str) -> tuple[str, str | None]:
    """For http(s) URLs with user:password@, the URL without them and "user:password".

    The credentials then travel as an HTTP header in the environment instead of in
    argv and in the cached repository's config.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, f"{unquote(parts.username or '')}:{unquote(parts.password)}"


def _normalize_ref(ref: str | None) -> str | None:
    if ref is None:
        return None
    ref = ref.strip()
    if not ref or ref == "HEAD":
        return None
    if ref.startswith("-") or any(c in ref for c in " \t\n~^:?*[\\") or ".." in ref:
        raise ValueError(f"invalid git ref {ref!r}")
    return ref


def normalize_path(path: str) -> str:
    """A relative POSIX path inside the repository; "" for the whole tree."""
    pure = PurePosixPath(path.strip() or ".")
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"path {path!r} must be relative and stay inside the repository")
    normal = "/".join(part for part in pure.parts if part != ".")
    if normal.startswith("-"):
        raise ValueError(f"invalid path {path!r}")
    return normal


def _local_ref(remote_ref: str) -> str:
    return f"{_PRIVATE}/{remote_ref.removeprefix('refs/')}"


def _ls_remote_lines(out: str) -> Iterator[tuple[str, str]]:
    """(ref name, object id) pairs of `git ls-remote` output."""
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name and not sha.startswith("ref:"):
            yield name.strip(), sha.strip()


def _stderr_reason(stderr: str) -> str:
    """The part of git's stderr that says why: its last fatal/error line and the
    detail lines after it (or just the last line), without the boilerplate."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line]
    useful = [line for line in lines if not line.lower().startswith(_BOILERPLATE)] or lines
    starts = [i for i, line in enumerate(useful) if line.startswith(("fatal:", "error:"))]
    reason = " ".join(useful[starts[-1] :]) if starts else (useful[-1] if useful else "")
    return reason[:300]


_CLEARED_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH
"""Mode bits tarfile's `data` filter clears, and so does the fallback."""


def extract_tar(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract `git archive` output through tarfile's `data` filter. Pythons
    without extraction filters (before 3.11.4; Debian 12 ships 3.11.2) get the
    same rules by hand: members and link targets stay inside `dest`, only files,
    directories and symlinks, no setuid/setgid/sticky or group/other write bits."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter=_safe_member)
        return
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(path)]) == root

    for member in tar.getmembers():
        target = os.path.join(root, member.name)
        if os.path.isabs(member.name) or not inside(target):
            raise tarfile.TarError(f"{member.name!r} would be extracted outside the export")
        if member.issym():
            link = os.path.join(os.path.dirname(target), member.linkname)
            if os.path.isabs(member.linkname) or not inside(link):
                log.warning("git export: skipping %s: its link target leaves the tree", member.name)
                continue
        elif not (member.isfile() or member.isdir()):
            continue
        member.mode &= ~_CLEARED_BITS
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        tar.extract(member, root, set_attrs=not member.issym(), numeric_owner=True)


def _safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's `data` filter, but a symlink leaving the export is skipped, not fatal:
    one bad link should not make the whole revision unreadable."""
    try:
        return tarfile.data_filter(member, dest)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        log.warning("git export: skipping %s: its link target leaves the tree", member.name)
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock: one fetch at a time per cache, across threads and processes."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
