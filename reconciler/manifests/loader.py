"""`load`: a config tree in, one DesiredState or every error out; through the
cache of validated trees (an unchanged tree is not parsed) and the parse memo
(a changed tree parses only the files that changed); then, for a daemon, the
part of the revision its shard enforces (reconciler.shards)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import cache as _cache
from reconciler import shards as _shards
from reconciler.cache import Cache
from reconciler.manifests.collect import ParseMemo
from reconciler.manifests.documents import _Documents
from reconciler.manifests.issues import Issue, ManifestError, _Reparse, _Stop
from reconciler.manifests.limits import Limits
from reconciler.manifests.tree import _File, _read_tree
from reconciler.model import DesiredState, Provider, ResourceId

if TYPE_CHECKING:
    from reconciler.bundles import RemoteFetcher


def load(
    path: Path,
    registry: Mapping[str, Provider[Any]],
    *,
    limits: Limits | None = None,
    revision: str | None = None,
    cache: Cache | None = None,
    memo: ParseMemo | None = None,
    remote: RemoteFetcher | None = None,
    shard: str | None = None,
) -> DesiredState:
    """Load and validate every manifest under `path`; raise ManifestError.

    `cache` keeps whole validated trees on disk (an unchanged tree is not parsed);
    `memo` keeps parsed files in memory (a changed tree parses only changed files);
    `remote` fetches remote bundles (without it, a remote bundle is an error).
    `shard` selects the part of the revision one daemon enforces (`shards.select`):
    a name, or "" for a daemon without --shard (refused a revision that declares
    shards); None (`validate`, `graph`) keeps the whole revision.
    """
    root = path if path.is_dir() else path.parent
    if not path.exists():
        raise ManifestError([Issue(str(path), None, "", "no such file or directory")])
    limits = limits or Limits()
    files, digest, others = _read_tree(path, root, limits)
    revision = revision or digest[:12]
    cache_key = ""
    fingerprint = cache.fingerprint if cache is not None else ""
    if cache is not None:
        cache_key = hashlib.sha256(f"{digest}\0{fingerprint}\0{limits}".encode()).hexdigest()
        state = _cache.read(cache, cache_key, registry, revision)
        if state is not None:
            return _select(dataclasses.replace(state, digest=digest), shard)
    if memo is not None:
        context = f"{others}\0{fingerprint}\0{limits}"
        if memo.context != context:
            memo.context, memo.files, memo.spec_bytes = context, {}, {}
    key = _cache.DigestKey(cache) if cache is not None else None
    try:
        docs, edges = _parse(files, root, registry, limits, memo, key, remote)
    except _Reparse:
        docs, edges = _parse(files, root, registry, limits, None, key, remote)
    if docs.issues:
        raise ManifestError(docs.issues)
    if memo is not None:  # only what this revision uses stays in memory
        memo.files, memo.spec_bytes = docs.used.files, docs.used.spec_bytes
    cacheable = not docs.secrets and not docs.floating
    state = DesiredState(
        revision, docs.resources, edges, docs.instances, digest, cacheable, docs.shards
    )
    if cache is not None and cache.write and cacheable:
        _cache.write(cache, cache_key, state)
    return _select(state, shard)


def _select(state: DesiredState, shard: str | None) -> DesiredState:
    """The part of a valid revision that `shard` enforces; a shard that cannot be
    had rejects the revision as any error of its documents does."""
    if shard is None:
        return state
    try:
        return _shards.select(state, shard)
    except _shards.ShardError as exc:
        where = exc.location
        file, line = (where.file, where.line) if where is not None else (f"--shard {shard}", None)
        raise ManifestError([Issue(file, line, "", str(exc))]) from None


def _parse(
    files: list[_File],
    root: Path,
    registry: Mapping[str, Provider[Any]],
    limits: Limits,
    memo: ParseMemo | None,
    digest_key: Callable[[], bytes] | None,
    remote: RemoteFetcher | None = None,
) -> tuple[_Documents, dict[ResourceId, tuple[ResourceId, ...]]]:
    docs = _Documents(root, registry, limits, memo, digest_key, remote)
    try:
        for file in files:
            if file.raw is None:
                docs.add_issue(Issue(file.shown, None, "", file.problem or "unreadable"))
            else:
                docs.add_file(file.path, file.shown, file.raw, file.digest)
    except _Stop:
        return docs, {}  # past a limit of the revision: what was found is reported
    return docs, docs.cross_checks()
