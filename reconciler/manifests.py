"""The manifest loader: a config tree in, one immutable DesiredState or every
error found out.

Every `*.yaml`/`*.yml` under the path is read (several documents per file),
each document's envelope checked, its spec validated by the provider's pydantic
model and prepared by the provider; then ids, dependencies and paths are checked
across documents. Nothing is returned unless all of it is valid, so a bad
revision is rejected whole. Errors name file, line and field.

Parsing uses libyaml (CSafeLoader) with a mapping constructor that rejects
duplicate keys; a document with anchors is measured before construction so an
alias bomb is refused instead of expanded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from reconciler import graph
from reconciler.model import (
    API_VERSION,
    DEFAULT_POLICY,
    PROCESS_DIGEST_KEY,
    DesiredState,
    Location,
    Policy,
    PrepareContext,
    Provider,
    Resource,
    ResourceId,
    SpecError,
    resource_id,
)

if TYPE_CHECKING:
    from yaml.nodes import Node

_ENVELOPE = ("apiVersion", "kind", "metadata", "spec", "policy")
_METADATA = ("name", "labels", "annotations")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Limits:
    max_file_bytes: int = 8 * 1024 * 1024
    max_nodes: int = 200_000
    """Nodes per document after alias expansion."""


@dataclass(frozen=True, slots=True)
class Issue:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ManifestError(Exception):
    """The revision is invalid; `issues` holds every error found."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        noun = "error" if len(issues) == 1 else "errors"
        super().__init__(f"{len(issues)} {noun}:\n" + "\n".join(f"  {i}" for i in issues))


def _field(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def tree_files(root: Path) -> list[Path]:
    """Every file of a config tree in a stable order; hidden files and directories
    (such as .git) skipped. Manifests are the `*.yaml`/`*.yml` among them."""
    if root.is_file():
        return [root]
    found = [
        p
        for p in root.rglob("*")
        if not any(part.startswith(".") for part in p.relative_to(root).parts) and p.is_file()
    ]
    return sorted(found)


def manifest_files(root: Path) -> list[Path]:
    """The manifests of a config tree, in the order they are loaded."""
    return [p for p in tree_files(root) if p.suffix in (".yaml", ".yml")]


class _Reparse(Exception):
    """A memoized file needs its YAML nodes (to point at a line): parse afresh."""


@dataclass
class ParseMemo:
    """Parsed manifests by file content, kept by a long-running caller (the daemon)
    so that a new revision parses only the files that changed. Entries are valid
    for one `context` (providers, their settings, the non-manifest files)."""

    context: str = ""
    files: dict[tuple[str, bytes], list[Resource]] = dataclasses.field(default_factory=dict)


class _Documents:
    """Collects resources and issues while walking the files of one revision."""

    def __init__(
        self,
        root: Path,
        registry: Mapping[str, Provider[Any]],
        limits: Limits,
        memo: dict[tuple[str, bytes], list[Resource]] | None = None,
        digest_key: Callable[[], bytes] | None = None,
    ) -> None:
        self.root = root
        self.registry = registry
        self.limits = limits
        self.memo = memo
        self.used: dict[tuple[str, bytes], list[Resource]] = {}
        self.issues: list[Issue] = []
        self.resources: dict[ResourceId, Resource] = {}
        self.sources: dict[str, bytes] = {}
        """Raw bytes of every parsed manifest, to find a node again for an error line:
        node trees are dropped after each document, they cost more than the specs."""
        self.seen_ids: set[ResourceId] = set()
        self.digest_key = digest_key
        self.secrets = False
        """Whether a spec resolved a secret: the tree is then never cached (0045)."""

    def _node(self, rid: ResourceId) -> Node:
        """The YAML node of a resource's document, parsed again from its file."""
        from reconciler import yamlload

        res = self.resources[rid]
        raw = self.sources.get(res.location.file)
        if raw is None:  # came from the memo: parse the whole tree afresh
            raise _Reparse
        for node, _ in yamlload.documents(raw.decode("utf-8"), self.limits.max_nodes):
            if int(node.start_mark.line) + 1 == res.location.line:
                return node
        raise _Reparse

    def add_file(self, path: Path, shown: str, raw: bytes, digest: bytes = b"") -> None:
        key = (shown, digest)
        if self.memo is not None:
            known = self.memo.get(key)
            if known is not None:
                for res in known:
                    if res.id in self.seen_ids:
                        raise _Reparse  # a duplicate id: report it with lines
                    self.seen_ids.add(res.id)
                    self.resources[res.id] = res
                self.used[key] = known
                return
        issues, before = len(self.issues), len(self.resources)
        secrets = self._parse_file(path, shown, raw)
        # a file that resolved secrets is parsed again each time: they may have changed
        if self.memo is not None and len(self.issues) == issues and not secrets:
            self.used[key] = list(self.resources.values())[before:]

    def _parse_file(self, path: Path, shown: str, raw: bytes) -> bool:
        """Parse one manifest file; whether any of its specs resolved a secret."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.issues.append(Issue(shown, None, "", f"not UTF-8 text (byte {exc.start})"))
            return False
        self.sources[shown] = raw
        ctx = PrepareContext(path, self.root, digest_key=self.digest_key)
        self._parse_documents(shown, text, ctx)
        self.secrets = self.secrets or bool(ctx.resolved)
        return bool(ctx.resolved)

    def _parse_documents(self, shown: str, text: str, ctx: PrepareContext) -> None:
        from reconciler import yamlload  # only a tree not found in the cache is parsed

        try:
            for node, data in yamlload.documents(text, self.limits.max_nodes):
                self._add_document(shown, node, data, ctx)
        except yamlload.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = None if mark is None else mark.line + 1
            problem = exc.problem or str(exc)
            if exc.context and not isinstance(exc, yamlload.DuplicateKey):
                problem = f"{problem} ({exc.context})"
            self.issues.append(Issue(shown, line, "", f"invalid YAML: {problem}"))
        except yamlload.YAMLError as exc:
            self.issues.append(Issue(shown, None, "", f"invalid YAML: {exc}"))
        except RecursionError:
            self.issues.append(Issue(shown, None, "", "invalid YAML: nested too deeply"))

    def _issue(self, file: str, node: Node, path: tuple[str | int, ...], message: str) -> None:
        from reconciler.yamlload import line_of

        self.issues.append(Issue(file, line_of(node, path), _field(path), message))

    def _validation(
        self,
        file: str,
        node: Node,
        prefix: tuple[str, ...],
        model: type[BaseModel],
        exc: ValidationError,
    ) -> None:
        for error in exc.errors(include_url=False):
            path = prefix + tuple(error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                known = ", ".join(f.alias or name for name, f in model.model_fields.items())
                message = f"unknown field; expected one of {known}"
            elif error["type"] == "missing":
                message = "required field is missing"
            self._issue(file, node, path, message)

    def _add_document(self, file: str, node: Node, data: Any, ctx: PrepareContext) -> None:
        if data is None:
            return
        if not isinstance(data, dict):
            self._issue(file, node, (), "expected a mapping with apiVersion, kind, metadata, spec")
            return
        ok = True
        for key in data:
            if key not in _ENVELOPE:
                self._issue(
                    file,
                    node,
                    (str(key),),
                    f"unknown field; expected one of {', '.join(_ENVELOPE)}",
                )
                ok = False
        if data.get("apiVersion") != API_VERSION:
            found = data.get("apiVersion")
            self._issue(
                file,
                node,
                ("apiVersion",),
                f"expected {API_VERSION!r}, found {found!r}"
                if found is not None
                else f"required field is missing (expected {API_VERSION!r})",
            )
            ok = False
        kind = data.get("kind")
        provider = self.registry.get(kind) if isinstance(kind, str) else None
        if provider is None:
            known = ", ".join(sorted(self.registry))
            self._issue(
                file,
                node,
                ("kind",),
                f"unknown kind {kind!r}; known kinds: {known}"
                if kind is not None
                else f"required field is missing; one of {known}",
            )
            ok = False
        name = self._metadata(file, node, data.get("metadata"))
        if name is None:
            return
        rid = resource_id(str(kind), name)
        location = Location(file, int(node.start_mark.line) + 1)
        if rid in self.seen_ids:
            first = self.resources.get(rid)
            where = f" (first defined at {first.location})" if first else ""
            self._issue(file, node, ("metadata", "name"), f"duplicate resource id {rid}{where}")
            return
        self.seen_ids.add(rid)
        spec_data = data.get("spec")
        if not isinstance(spec_data, dict):
            self._issue(
                file,
                node,
                ("spec",),
                "expected a mapping" if spec_data is not None else "required field is missing",
            )
            ok = False
        policy_data = data.get("policy") or {}
        policy: Policy | None = DEFAULT_POLICY if policy_data == {} else None
        if policy is not None:
            pass
        elif not isinstance(policy_data, dict):
            self._issue(file, node, ("policy",), "expected a mapping")
            ok = False
        else:
            try:
                policy = Policy.model_validate(policy_data)
            except ValidationError as exc:
                self._validation(file, node, ("policy",), Policy, exc)
                ok = False
        if provider is None or not isinstance(spec_data, dict):
            return
        try:
            spec = provider.Spec.model_validate(spec_data)
            spec = provider.prepare(spec, ctx)
        except ValidationError as exc:
            self._validation(file, node, ("spec",), provider.Spec, exc)
            return
        except SpecError as exc:
            self._issue(file, node, ("spec", *exc.path), ctx.mask(str(exc)))
            return
        if not ok or policy is None:
            return
        spec_hash = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:32]
        labels = data["metadata"].get("labels") or {}
        self.resources[rid] = Resource(str(kind), name, spec, policy, spec_hash, location, labels)

    def _metadata(self, file: str, node: Node, metadata: Any) -> str | None:
        if not isinstance(metadata, dict):
            self._issue(
                file,
                node,
                ("metadata",),
                "expected a mapping with name"
                if metadata is not None
                else "required field is missing",
            )
            return None
        valid = True
        for key in metadata:
            if key not in _METADATA:
                self._issue(
                    file,
                    node,
                    ("metadata", str(key)),
                    f"unknown field; expected one of {', '.join(_METADATA)}",
                )
                valid = False
        labels = metadata.get("labels")
        if labels is not None and not (
            isinstance(labels, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            self._issue(file, node, ("metadata", "labels"), "expected a mapping of strings")
            valid = False
        name = metadata.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            self._issue(
                file,
                node,
                ("metadata", "name"),
                "required field is missing"
                if name is None
                else f"expected letters, digits, '-', '_' or '.', found {name!r}",
            )
            return None
        return name if valid else None

    def cross_checks(self) -> dict[ResourceId, tuple[ResourceId, ...]]:
        """Dependencies, path ownership and cycles across all valid documents."""
        paths: dict[ResourceId, str] = {}
        claimed: dict[str, ResourceId] = {}
        for rid, res in self.resources.items():
            path = self.registry[res.kind].path(res.spec)
            if path is None:
                continue
            other = claimed.get(path)
            if other is not None:
                self._issue(
                    res.location.file,
                    self._node(rid),
                    ("spec", "path"),
                    f"{path} is also managed by {other} ({self.resources[other].location})",
                )
                continue
            claimed[path] = rid
            paths[rid] = path
        parents = graph.implicit_edges(paths)
        edges: dict[ResourceId, tuple[ResourceId, ...]] = {}
        for rid, res in self.resources.items():
            for i, dep in enumerate(res.policy.depends_on):
                if dep not in self.seen_ids:
                    self._issue(
                        res.location.file,
                        self._node(rid),
                        ("policy", "dependsOn", i),
                        f"depends on {dep}, which is not defined in this revision",
                    )
                elif dep == rid:
                    self._issue(
                        res.location.file,
                        self._node(rid),
                        ("policy", "dependsOn", i),
                        "a resource cannot depend on itself",
                    )
            deps = [d for d in res.policy.depends_on if d in self.resources and d != rid]
            if rid in parents:
                deps.append(parents[rid])
            edges[rid] = tuple(dict.fromkeys(deps))
        cycle = graph.find_cycle(edges)
        if cycle is not None:
            first = self.resources[cycle[0]]
            self._issue(
                first.location.file,
                self._node(cycle[0]),
                ("policy", "dependsOn"),
                "dependency cycle: " + " -> ".join(cycle),
            )
        return edges


@dataclass(frozen=True, slots=True)
class Cache:
    """Where validated desired states are kept between runs, keyed by the digest
    of the config tree and `fingerprint` (the providers, their settings and the
    code of reconciler itself): an unchanged tree is not parsed again. A tree
    whose specs resolved secrets is never kept (decision 0045).

    The directory also holds `digest.key`, the key of the digests that stand for
    secrets in stored specs, so that they compare equal from one run to the next."""

    directory: Path
    fingerprint: str
    write: bool = True

    @property
    def key_file(self) -> Path:
        return self.directory / "digest.key"


_KEY_BYTES = 32


class _DigestKey:
    """The state directory's digest key, read (or made) when a load first needs it."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.key: bytes | None = None

    def __call__(self) -> bytes:
        if self.key is None:
            self.key = _digest_key(self.cache) or PROCESS_DIGEST_KEY
        return self.key


def _digest_key(cache: Cache) -> bytes | None:
    """The key from `cache.key_file`, made there if there is none and the cache may
    be written; None otherwise."""
    try:
        key = cache.key_file.read_bytes()
        if len(key) == _KEY_BYTES:
            return key
    except OSError:
        pass
    if not cache.write:
        return None
    try:
        cache.directory.mkdir(parents=True, exist_ok=True)
        temp = cache.directory / f".digest.key.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, cache.key_file)  # never replaces a key another process made
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
        key = cache.key_file.read_bytes()
    except OSError:
        return None
    return key if len(key) == _KEY_BYTES else None


@dataclass(frozen=True, slots=True)
class _File:
    path: Path
    shown: str
    raw: bytes | None
    """Bytes of a manifest; None for other files (hashed, not kept) and errors."""
    problem: str | None = None
    digest: bytes = b""


def _read_tree(path: Path, root: Path, limits: Limits) -> tuple[list[_File], str, str]:
    """Every file of the tree (manifests read, others hashed), the tree digest and
    the digest of the non-manifest files (sources, templates) alone."""
    digest = hashlib.sha256()
    others = hashlib.sha256()
    files = []
    for file in tree_files(path):
        shown = str(file.relative_to(root)) if file != root else file.name
        manifest = file.suffix in (".yaml", ".yml") or file == path
        try:
            if not manifest:
                with file.open("rb") as handle:
                    file_hash = hashlib.file_digest(handle, "sha256").digest()
                digest.update(shown.encode() + b"\0" + file_hash)
                others.update(shown.encode() + b"\0" + file_hash)
                continue
            size = file.stat().st_size
            if size > limits.max_file_bytes:
                problem = f"file is {size} bytes, over the limit of {limits.max_file_bytes}"
                files.append(_File(file, shown, None, problem))
                continue
            raw = file.read_bytes()
        except OSError as exc:
            if manifest:  # other files matter only when referenced; prepare says so
                files.append(_File(file, shown, None, f"cannot read: {exc.strerror}"))
            continue
        file_hash = hashlib.sha256(raw).digest()
        digest.update(shown.encode() + b"\0" + file_hash)
        files.append(_File(file, shown, raw, digest=file_hash))
    return files, digest.hexdigest(), others.hexdigest()


def tree_digest(path: Path) -> str:
    """The digest a load of `path` would use as its revision (all files' bytes)."""
    root = path if path.is_dir() else path.parent
    return _read_tree(path, root, Limits(max_file_bytes=1 << 62))[1]


def _cached(cache: Cache, key: str) -> DesiredState | None:
    try:
        with (cache.directory / f"{key}.pickle").open("rb") as handle:
            state = pickle.load(handle)
    except FileNotFoundError:
        return None
    except Exception:  # a damaged or foreign cache entry is only a miss
        return None
    return state if isinstance(state, DesiredState) else None


def _store_cached(cache: Cache, key: str, state: DesiredState) -> None:
    """Keep only the newest entry; a failure to write costs only the next parse."""
    try:
        cache.directory.mkdir(parents=True, exist_ok=True)
        temp = cache.directory / f".{key}.{os.getpid()}.tmp"
        with temp.open("wb") as handle:
            pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        temp.replace(cache.directory / f"{key}.pickle")
        for old in cache.directory.glob("*.pickle"):
            if old.name != f"{key}.pickle":
                old.unlink(missing_ok=True)
    except OSError:
        pass


def load(
    path: Path,
    registry: Mapping[str, Provider[Any]],
    *,
    limits: Limits | None = None,
    revision: str | None = None,
    cache: Cache | None = None,
    memo: ParseMemo | None = None,
) -> DesiredState:
    """Load and validate every manifest under `path`; raise ManifestError.

    `cache` keeps whole validated trees on disk (an unchanged tree is not parsed);
    `memo` keeps parsed files in memory (a changed tree parses only changed files).
    """
    root = path if path.is_dir() else path.parent
    if not path.exists():
        raise ManifestError([Issue(str(path), None, "", "no such file or directory")])
    limits = limits or Limits()
    files, digest, others = _read_tree(path, root, limits)
    cache_key = ""
    fingerprint = cache.fingerprint if cache is not None else ""
    if cache is not None:
        cache_key = hashlib.sha256(f"{digest}\0{fingerprint}\0{limits}".encode()).hexdigest()
        state = _cached(cache, cache_key)
        if state is not None:
            return dataclasses.replace(state, revision=revision or digest[:12])
    files_memo = None
    if memo is not None:
        context = f"{others}\0{fingerprint}\0{limits}"
        if memo.context != context:
            memo.context, memo.files = context, {}
        files_memo = memo.files
    key = _DigestKey(cache) if cache is not None else None
    try:
        docs, edges = _parse(files, root, registry, limits, files_memo, key)
    except _Reparse:
        docs, edges = _parse(files, root, registry, limits, None, key)
    if docs.issues:
        raise ManifestError(docs.issues)
    if memo is not None:
        memo.files = docs.used  # only what this revision uses stays in memory
    state = DesiredState(
        revision=revision or digest[:12], resources=docs.resources, dependencies=edges
    )
    if cache is not None and cache.write and not docs.secrets:
        _store_cached(cache, cache_key, state)
    return state


def _parse(
    files: list[_File],
    root: Path,
    registry: Mapping[str, Provider[Any]],
    limits: Limits,
    memo: dict[tuple[str, bytes], list[Resource]] | None,
    digest_key: Callable[[], bytes] | None,
) -> tuple[_Documents, dict[ResourceId, tuple[ResourceId, ...]]]:
    docs = _Documents(root, registry, limits, memo, digest_key)
    for file in files:
        if file.raw is None:
            docs.issues.append(Issue(file.shown, None, "", file.problem or "unreadable"))
        else:
            docs.add_file(file.path, file.shown, file.raw, file.digest)
    return docs, docs.cross_checks()
