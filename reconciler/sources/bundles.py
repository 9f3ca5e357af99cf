"""Remote bundles: fetches `{repo, ref, path}` of a `Bundle` document with the
main repository's git machinery and credentials, and keeps what it fetched.

`GitBundles` implements `reconciler.bundles.RemoteFetcher` on top of the git
source (`reconciler.sources.git`): the same credential handling (ssh key and
known_hosts, an HTTP token file or user:password of the main repository's URL,
all through git's environment, never argv), the same scrubbing of errors, the
same timeout, shallow fetches, fetch of a commit by id and safe tar extraction.

Cache layout under `cache_dir` (STATE_DIR/bundles for the daemon):

    <host-path>-<hash>/         one cache per remote URL (credential-free key)
        repo/                   bare repository, as the git source keeps it
        trees/<sha>-<pathkey>/<path>
                                `path` exported at commit `sha`, never modified
        trees/.<sha>-<pathkey>.path
        .lock                   serializes the fetches of this URL

A full 40-hex commit already exported is served from trees/ without running
git (no network). A branch or tag is resolved with the network at every
`GitBundles.fetch`; a `session()` remembers each resolution for its own life,
so one load asks the remote once per (repo, ref) however many `Bundle`
documents name it (docs/decisions/0107).

HTTP credentials go only to the main repository's origin (scheme, host and
port): a manifest naming another host gets no token (docs/decisions/0108).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import git

from reconciler.bundles import BundleSourceError, RemoteTree
from reconciler.sources.base import SourceError, redact
from reconciler.sources.git import (
    GitSource,
    _normalize_ref,
    _split_credentials,
    normalize_path,
)
from reconciler.sources.signatures import SignaturePolicy, UntrustedRevision, Verifier

__all__ = ["BundleSession", "GitBundles"]

log = logging.getLogger(__name__)

MAX_FILES = 10_000
"""Default limit of files in one exported bundle directory."""
MAX_BYTES = 64 * 1024 * 1024
"""Default limit of the bytes of the files of one exported bundle directory."""
KEEP_TREES = 32
"""Exports kept per remote URL beyond those used in the last RECENT seconds."""
RECENT = 24 * 3600.0
"""An export used this recently is never pruned (a load in progress may read it)."""

_SHA = re.compile(r"[0-9a-f]{40}")
_PROTOCOLS = ("git", "http", "https", "ssh")
_MAX_SOURCES = 256
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class _Request:
    remote: str
    """The URL git is given (credential-free)."""
    shown: str
    """The URL in messages (redacted)."""
    scheme: str
    ref: str | None
    path: str

    @property
    def label(self) -> str:
        return f"{self.path or '.'} at {self.ref or 'HEAD'!r} of {self.shown}"


class GitBundles:
    """Fetches remote bundles into `cache_dir` with one set of git credentials.

    `origin_url` is the main repository's URL (it may carry user:password@, as
    GitSource's may): HTTP credentials (that password, or `token_file`) are sent
    only to bundle repositories of its scheme, host and port; without it, to
    none. The ssh key and known_hosts apply to every ssh URL (public-key
    authentication discloses no secret; strict host checking still applies).
    `signatures` is the main repository's policy: a bundle's commit (or annotated
    tag) must be signed as the main repository's must. `allow_file` lets bundles
    name file:// URLs and local paths (off unless the main repository is local:
    a manifest must not read any repository the daemon's user can).
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        origin_url: str | None = None,
        ssh_key: Path | None = None,
        known_hosts: Path | None = None,
        insecure_ignore_host_key: bool = False,
        token_file: Path | None = None,
        timeout: float = 120.0,
        signatures: SignaturePolicy | None = None,
        allow_file: bool = False,
        shallow: bool = True,
        max_files: int = MAX_FILES,
        max_bytes: int = MAX_BYTES,
        keep_trees: int = KEEP_TREES,
    ) -> None:
        self.cache_dir = cache_dir
        self._origin: tuple[str, str, int] | None = None
        self._basic: str | None = None
        if origin_url is not None:
            remote, self._basic = _split_credentials(origin_url)
            if self._basic is not None and token_file is not None:
                raise ValueError("git url carries credentials and token_file is set: use one")
            self._origin = _origin(remote)
        self.ssh_key = ssh_key
        self.known_hosts = known_hosts
        self.insecure_ignore_host_key = insecure_ignore_host_key
        self.token_file = token_file
        self.timeout = timeout
        self.signatures = signatures
        self.protocols = (*_PROTOCOLS, "file") if allow_file else _PROTOCOLS
        self.shallow = shallow
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.keep_trees = max(1, keep_trees)
        self._sources: dict[tuple[str, str | None, str, bool], _BundleExport] = {}
        self._verifiers: dict[str, Verifier] = {}

    @classmethod
    def like(cls, source: GitSource, cache_dir: Path, **overrides: object) -> GitBundles:
        """A fetcher with `source`'s credentials, timeout and signature policy."""
        remote = source._remote
        basic = source._basic_credentials
        if basic is not None:
            # Back into the URL, which the constructor splits again: one entry point.
            user, _, password = basic.partition(":")
            parts = urlsplit(remote)
            netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
            remote = parts._replace(netloc=netloc).geturl()
        settings: dict[str, object] = {
            "origin_url": remote,
            "ssh_key": source.ssh_key,
            "known_hosts": source.known_hosts,
            "insecure_ignore_host_key": source.insecure_ignore_host_key,
            "token_file": source.token_file,
            "timeout": source.timeout,
            "signatures": source.signatures,
            "allow_file": _scheme(source._remote) == "file",
            **overrides,
        }
        return cls(cache_dir, **settings)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"GitBundles(cache_dir={str(self.cache_dir)!r})"

    def session(self) -> BundleSession:
        """A fetcher for one load: each (repo, ref) resolved once in its life."""
        return BundleSession(self)

    def fetch(self, repo: str, ref: str, path: str) -> RemoteTree:
        """The tree of `path` at `ref` of `repo` (RemoteFetcher); BundleSourceError.

        A full commit id already exported costs no git command at all; a branch or
        tag is resolved with the remote at each call."""
        return self._fetch(self._request(repo, ref, path), pinned=None)

    # ------------------------------------------------------------------ internals

    def _request(self, repo: str, ref: str, path: str) -> _Request:
        repo = repo.strip()
        shown = redact(repo)
        if not repo or repo.startswith("-"):
            raise BundleSourceError(f"invalid git url {shown!r}")
        remote, basic = _split_credentials(repo)
        if basic is not None or urlsplit(repo).password is not None:
            raise BundleSourceError(
                f"repo {shown} carries credentials: a manifest holds no secret; bundles are "
                "fetched with the main repository's credentials"
            )
        scheme = _scheme(remote)
        if scheme not in self.protocols:
            raise BundleSourceError(
                f"repo {shown}: the {scheme} protocol is not allowed for bundles "
                f"(allowed: {', '.join(self.protocols)})"
            )
        try:
            normal_ref = _normalize_ref(ref)
        except ValueError as error:
            raise BundleSourceError(f"{error} for repo {shown}") from None
        try:
            normal_path = normalize_path(path)
        except ValueError:
            raise BundleSourceError(
                f"bundle path {path!r} of {shown} must be relative and stay inside the repository"
            ) from None
        if normal_ref is not None and _SHA.fullmatch(normal_ref.lower()):
            normal_ref = normal_ref.lower()
        return _Request(remote, shown, scheme, normal_ref, normal_path)

    def _fetch(self, request: _Request, *, pinned: str | None) -> RemoteTree:
        """`pinned`: the commit `request.ref` resolved to earlier in a session (and
        verified then, if signatures are on): fetched by id, without checking again."""
        ref = pinned or request.ref
        verify = self.signatures is not None and pinned is None
        if ref is not None and _SHA.fullmatch(ref) and not verify:
            tree = self._exported(request, ref)
            if tree is not None:
                return tree
        source = self._source(request, ref, verify=verify)
        try:
            revision = source.fetch_sync()
        except UntrustedRevision as untrusted:
            raise BundleSourceError(
                f"cannot fetch {request.label}: untrusted: {untrusted.reason}"
            ) from None
        except SourceError as error:
            reason = str(error)
            for word in ("from", "on", "of"):
                reason = reason.replace(f" {word} {request.shown}", "")
            raise BundleSourceError(f"cannot fetch {request.label}: {reason}") from None
        return RemoteTree(root=revision.path, commit=revision.id)

    def _url_dir(self, request: _Request) -> Path:
        digest = hashlib.sha256(request.remote.encode()).hexdigest()[:16]
        parts = urlsplit(request.remote) if "://" in request.remote else None
        readable = (parts.hostname or "") + parts.path if parts else request.remote
        slug = re.sub(r"[^A-Za-z0-9._]+", "-", readable).strip("-.")[:60]
        return self.cache_dir / f"{slug or 'repo'}-{digest}"

    def _exported(self, request: _Request, sha: str) -> RemoteTree | None:
        """The export of `request.path` at `sha` if made before (no git, no network)."""
        trees = self._url_dir(request) / "trees"
        name = f"{sha}-{_path_key(request.path)}"
        final = trees / name
        try:
            complete = (trees / f".{name}.path").read_text() == request.path
        except OSError:
            return None
        if not complete or not final.is_dir():
            return None
        try:
            os.utime(final)  # recently used: not pruned
        except OSError:
            pass  # a read-only state directory (plan): the export is still good
        return RemoteTree(root=final / request.path if request.path else final, commit=sha)

    def _source(self, request: _Request, ref: str | None, *, verify: bool) -> _BundleExport:
        key = (request.remote, ref, request.path, verify)
        source = self._sources.get(key)
        if source is not None:
            return source
        url_dir = self._url_dir(request)
        http = request.scheme in ("http", "https")
        same_origin = http and self._origin is not None and _origin(request.remote) == self._origin
        verifier = None
        if verify:
            assert self.signatures is not None
            verifier = self._verifiers.get(request.remote)
            if verifier is None:
                verifier = Verifier(self.signatures, url_dir)
                self._verifiers[request.remote] = verifier
        try:
            source = _BundleExport(
                request.remote,
                ref=ref,
                path=request.path,
                cache_dir=url_dir,
                ssh_key=self.ssh_key,
                known_hosts=self.known_hosts,
                insecure_ignore_host_key=self.insecure_ignore_host_key,
                token_file=self.token_file if same_origin else None,
                shallow=self.shallow,
                timeout=self.timeout,
                keep_trees=self.keep_trees,
            )
        except ValueError as error:
            raise BundleSourceError(f"cannot fetch {request.label}: {error}") from None
        if len(self._sources) >= _MAX_SOURCES:
            self._sources.clear()  # pinned commits of a long-lived fetcher pile up
        source.configure(
            basic=self._basic if same_origin else None,
            verifier=verifier,
            protocols=self.protocols,
            max_files=self.max_files,
            max_bytes=self.max_bytes,
        )
        self._sources[key] = source
        return source


class BundleSession:
    """A `RemoteFetcher` for one load: the first fetch of a (repo, ref) resolves it,
    later ones (other paths, other `Bundle` documents) reuse that commit without
    asking the remote again, and a failure is not retried within the session."""

    def __init__(self, bundles: GitBundles) -> None:
        self.bundles = bundles
        self._resolved: dict[tuple[str, str | None], str] = {}
        self._done: dict[tuple[str, str | None, str], RemoteTree | BundleSourceError] = {}

    def fetch(self, repo: str, ref: str, path: str) -> RemoteTree:
        request = self.bundles._request(repo, ref, path)
        key = (request.remote, request.ref, request.path)
        done = self._done.get(key)
        if done is None:
            pinned = self._resolved.get((request.remote, request.ref))
            try:
                done = self.bundles._fetch(request, pinned=pinned)
            except BundleSourceError as error:
                done = error
            else:
                self._resolved[(request.remote, request.ref)] = done.commit
            self._done[key] = done
        if isinstance(done, BundleSourceError):
            raise BundleSourceError(str(done))
        return done


class _BundleExport(GitSource):
    """A GitSource for one (repo, ref, path) of a bundle: exports keyed by commit
    and path, path and size checks before the export, recency-based pruning."""

    protocols: tuple[str, ...] = _PROTOCOLS
    max_files = MAX_FILES
    max_bytes = MAX_BYTES

    def configure(
        self,
        *,
        basic: str | None,
        verifier: Verifier | None,
        protocols: tuple[str, ...],
        max_files: int,
        max_bytes: int,
    ) -> None:
        # Set after GitSource's constructor: the basic credentials do not come from
        # this URL, and one verifier (one keyring) serves every path of the URL.
        self._basic_credentials = basic
        self._verifier = verifier
        self.protocols = protocols
        self.max_files = max_files
        self.max_bytes = max_bytes

    def _export_name(self, sha: str) -> str:
        return f"{sha}-{_path_key(self.path)}"

    def _network_env(self) -> dict[str, str]:
        env = super()._network_env()
        # Also covers redirects and anything git would reach from this URL.
        env["GIT_ALLOW_PROTOCOL"] = ":".join(self.protocols)
        return env

    def _check_path(self, cmd: git.Git, sha: str) -> None:
        """The path is a directory at `sha` (no component a symlink), its files stay
        within the limits, and no symlink in it leads out of it."""
        path = self.path
        if path:
            parts = path.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            # -t lists the trees on the way; each prefix is named too, so that a
            # symlink component shows up instead of matching nothing.
            out = self._run(cmd, "export", ["ls-tree", "-t", "-z", sha, "--", *prefixes])
            entries = _ls_tree(out)
            for prefix in prefixes:
                entry = entries.get(prefix)
                if entry is None:
                    raise SourceError(f"path {path} not found at {sha}")
                mode, kind, _, _ = entry
                if mode == "120000":
                    raise SourceError(
                        f"path {path} at {sha}: {prefix} is a symbolic link; a bundle path "
                        "must name a directory of the repository"
                    )
                if kind != "tree":
                    raise SourceError(f"path {path} at {sha} is a {kind}, not a directory")
        out = self._run(
            cmd, "export", ["ls-tree", "-r", "-l", "-z", sha, "--", *([path] if path else [])]
        )
        files = total = 0
        links: list[tuple[str, str]] = []
        for name, (mode, kind, obj, size) in _ls_tree(out).items():
            if kind != "blob":
                continue  # submodules are not part of an archive
            files += 1
            total += size
            if mode == "120000":
                links.append((name, obj))
            if files > self.max_files:
                raise SourceError(
                    f"bundle {path or '.'} at {sha} has over {self.max_files} files (max_files)"
                )
            if total > self.max_bytes:
                raise SourceError(
                    f"bundle {path or '.'} at {sha} is over {self.max_bytes} bytes (max_bytes)"
                )
        for name, obj in links:
            target = self._run(cmd, "export", ["cat-file", "blob", obj])
            inside = posixpath.relpath(posixpath.dirname(name), path or ".")
            resolved = posixpath.normpath(posixpath.join(inside, target))
            if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                raise SourceError(
                    f"{name} at {sha} is a symbolic link to {target!r}, which leaves the "
                    f"bundle directory {path or '.'}"
                )

    def _prune_trees(self, keep: str) -> None:
        """Keep exports used in the last RECENT seconds and the newest keep_trees;
        drop leftovers of interrupted exports (we hold the URL's lock)."""
        trees = self._trees_dir
        now = time.time()
        exports: list[tuple[float, Path]] = []
        for entry in trees.iterdir():
            if entry.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_dir() and not entry.name.startswith("."):
                exports.append((entry.stat().st_mtime, entry))
        exports.sort(reverse=True)
        for rank, (mtime, entry) in enumerate(exports):
            if rank < self.keep_trees or entry.name == keep or now - mtime < RECENT:
                continue
            (trees / f".{entry.name}.path").unlink(missing_ok=True)
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------- helpers


def _scheme(url: str) -> str:
    """git's notion of the transport: URL scheme, a remote helper's name
    (`ext::command`), ssh for scp-like `host:path`, else file."""
    head = url.split("/", 1)[0]
    if "::" in head:
        return head.split("::", 1)[0].lower()
    if "://" in url:
        return url.split("://", 1)[0].lower()
    if ":" in head:
        return "ssh"  # user@host:path
    return "file"


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[scheme]


def _path_key(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:12]


def _ls_tree(out: str) -> dict[str, tuple[str, str, str, int]]:
    """name -> (mode, type, object id, size) of `git ls-tree -z [-l]` output."""
    entries: dict[str, tuple[str, str, str, int]] = {}
    for record in out.split("\0"):
        meta, tab, name = record.partition("\t")
        if not tab:
            continue
        fields = meta.split()
        size = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else 0
        entries[name] = (fields[0], fields[1], fields[2], size)
    return entries
