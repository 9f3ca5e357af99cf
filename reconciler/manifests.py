"""The manifest loader: a config tree in, one immutable DesiredState or every
error found out.

Every `*.yaml`/`*.yml` under the path is read (several documents per file),
each document's envelope checked, its spec validated by the provider's pydantic
model and prepared by the provider; then ids, dependencies and paths are checked
across documents. Nothing is returned unless all of it is valid, so a bad
revision is rejected whole. Errors name file, line and field.

Parsing uses libyaml (CSafeLoader) with a mapping constructor that rejects
duplicate keys; a document with anchors is measured before construction so an
alias bomb is refused instead of expanded. Everything a revision may hold is
bounded (`Limits`): no input can make a load exhaust memory or recurse without end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydantic import BaseModel, RootModel, ValidationError
from pydantic_core import PydanticSerializationError

from reconciler import cache as _cache
from reconciler import graph
from reconciler.cache import Cache
from reconciler.model import (
    API_VERSION,
    BUNDLE_KIND,
    DEFAULT_POLICY,
    DesiredState,
    Instance,
    Location,
    Policy,
    PrepareContext,
    Provider,
    Resource,
    ResourceId,
    SecretSources,
    SpecError,
    resource_id,
)

if TYPE_CHECKING:
    from yaml.nodes import Node

    from reconciler.bundles import Definition, RemoteFetcher

EMPTY_MARK = "# reconciler: empty"
"""The first line of a manifest that is meant to declare nothing (0094)."""
_EMPTY_FILE = (
    "empty manifest: a truncated file would prune what it declared; "
    f"to keep an empty file on purpose, make {EMPTY_MARK!r} its first line"
)
_MARKED_BUT_DECLARES = (
    f"the file starts with {EMPTY_MARK!r} but declares resources: remove the marker"
)

_ENVELOPE = ("apiVersion", "kind", "metadata", "spec", "policy")
_METADATA = ("name", "labels", "annotations")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")


__all__ = [
    "EMPTY_MARK",
    "Cache",
    "Issue",
    "Limits",
    "ManifestError",
    "ParseMemo",
    "load",
    "manifest_files",
    "tree_digest",
    "tree_files",
]

_MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one revision may hold. Crossing a limit is an error that names it
    (`max_files` ...) and its value, at the file and line where it was crossed;
    the revision is rejected whole. Together they bound the memory and time of a
    load, and of everything after it, whatever the config tree holds."""

    max_file_bytes: int = 8 * _MiB
    """Each file of the tree: manifests, and the sources and templates they use."""
    max_tree_bytes: int = 256 * _MiB
    """All files of the tree together."""
    max_files: int = 100_000
    """Files in the tree (hidden ones are not counted: they are not read)."""
    max_nodes: int = 200_000
    """Nodes per document after alias expansion."""
    max_expanded_bytes: int = 16 * _MiB
    """Characters of text per document after alias expansion."""
    max_depth: int = 100
    """Levels of nested mappings and sequences in a document."""
    max_resources: int = 100_000
    """Resources in a revision."""
    max_spec_bytes: int = 256 * _MiB
    """All specs of a revision as stored (JSON), sources and templates filled in."""
    max_bundle_depth: int = 10
    """Bundles instantiated by bundles, counted from a manifest of the tree."""
    max_bundle_instances: int = 10_000
    """Bundle instances in a revision."""
    max_remote_bundles: int = 100
    """Distinct remote bundle sources (repo, ref, path) in a revision: each is a
    fetch over the network."""


_MAX_ISSUES = 1000
"""A revision with more errors is reported up to here: the rest cannot be read anyway."""


class _Stop(Exception):
    """A limit of the whole revision was crossed: stop reading (the issue is recorded)."""


@dataclass(frozen=True, slots=True)
class Issue:
    file: str
    line: int | None
    field: str
    message: str
    via: str = ""
    """The bundle instance(s) the error was found in, for a file of a bundle:
    `Bundle/team-a-web at app.yaml:3` (the innermost first)."""

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        return f"{text} (in {self.via})" if self.via else text


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
    spec_bytes: dict[tuple[str, bytes], int] = dataclasses.field(default_factory=dict)
    """What the specs of each file in `files` count against `Limits.max_spec_bytes`."""


class _Documents:
    """Collects resources and issues while walking the files of one revision."""

    def __init__(
        self,
        root: Path,
        registry: Mapping[str, Provider[Any]],
        limits: Limits,
        memo: ParseMemo | None = None,
        digest_key: Callable[[], bytes] | None = None,
        remote: RemoteFetcher | None = None,
    ) -> None:
        self.root = root
        self.registry = registry
        self.limits = limits
        self.memo = memo
        self.used = ParseMemo()
        """The memo entries this revision used or made."""
        self.issues: list[Issue] = []
        self.spec_bytes = 0
        """Size of the specs so far, as dumped (the spec hash is taken over it)."""
        self.resources: dict[ResourceId, Resource] = {}
        self.sources: dict[str, bytes] = {}
        """Raw bytes of every parsed manifest, to find a node again for an error line:
        node trees are dropped after each document, they cost more than the specs."""
        self.seen_ids: set[ResourceId] = set()
        self.digest_key = digest_key
        self.secrets = False
        """Whether a spec resolved a secret: the tree is then never cached (0045)."""
        self.remote = remote
        self.frame = _Frame(root, "", "")
        """The bundle instance being expanded (the tree itself outside of one)."""
        self.instances: dict[str, Instance] = {}
        self.via_of: dict[str, str] = {}
        """Each instance's `Issue.via`."""
        self.bundles: dict[tuple[str, str], _Bundle | None] = {}
        """Bundles read in this load, by (tree, directory); None: invalid (reported)."""
        self.fetched: set[tuple[str, str, str]] = set()
        """The remote sources asked for in this load (`max_remote_bundles`)."""
        self.floating = False
        """Whether a remote bundle follows a branch or tag: the tree is then never
        cached, as the same manifests can give another revision."""

    def _node(self, rid: ResourceId) -> Node:
        """The YAML node of a resource's document, parsed again from its file."""
        res = self.resources[rid]
        raw = self.sources.get(res.location.file)
        if raw is None:  # came from the memo: parse the whole tree afresh
            raise _Reparse
        for node, _ in self._documents(raw.decode("utf-8")):
            if int(node.start_mark.line) + 1 == res.location.line:
                return node
        raise _Reparse

    def _documents(self, text: str) -> Iterator[tuple[Node, Any]]:
        from reconciler import yamlload  # only a tree not found in the cache is parsed

        limits = self.limits
        return yamlload.documents(
            text,
            max_nodes=limits.max_nodes,
            max_bytes=limits.max_expanded_bytes,
            max_depth=limits.max_depth,
        )

    def add_issue(self, issue: Issue) -> None:
        self.issues.append(issue)
        if len(self.issues) >= _MAX_ISSUES:
            self.issues.append(Issue(issue.file, None, "", f"stopped after {_MAX_ISSUES} errors"))
            raise _Stop

    def _count(self, file: str, line: int | None, spec_bytes: int) -> None:
        """Count one more resource against the limits of the whole revision."""
        limits = self.limits
        self.spec_bytes += spec_bytes
        if len(self.resources) >= limits.max_resources:
            message = f"over the limit of {limits.max_resources} resources (max_resources)"
        elif self.spec_bytes > limits.max_spec_bytes:
            message = (
                f"the specs of this revision are over {limits.max_spec_bytes} bytes "
                "(max_spec_bytes)"
            )
        else:
            return
        self.issues.append(Issue(file, line, "", message))
        raise _Stop

    def add_file(self, path: Path, shown: str, raw: bytes, digest: bytes = b"") -> None:
        key = (shown, digest)
        if self.memo is not None:
            known = self.memo.files.get(key)
            if known is not None:
                size = self.memo.spec_bytes.get(key, 0)
                for res in known:
                    if res.id in self.seen_ids:
                        raise _Reparse  # a duplicate id: report it with lines
                    self._count(shown, res.location.line, size)
                    size = 0
                    self.seen_ids.add(res.id)
                    self.resources[res.id] = res
                self.used.files[key] = known
                self.used.spec_bytes[key] = self.memo.spec_bytes.get(key, 0)
                return
        issues, before, size = len(self.issues), len(self.resources), self.spec_bytes
        instances = len(self.instances)
        secrets = self._parse_file(path, shown, raw)
        # a file that resolved secrets is parsed again each time: they may have
        # changed; so is one with bundles (its resources come from other files)
        bundled = len(self.instances) != instances
        if self.memo is not None and len(self.issues) == issues and not secrets and not bundled:
            self.used.files[key] = list(self.resources.values())[before:]
            self.used.spec_bytes[key] = self.spec_bytes - size

    def _parse_file(self, path: Path, shown: str, raw: bytes) -> bool:
        """Parse one manifest file; whether any of its specs resolved a secret."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.add_issue(Issue(shown, None, "", f"not UTF-8 text (byte {exc.start})"))
            return False
        self.sources[shown] = raw
        ctx = PrepareContext(
            path,
            self.root,
            digest_key=self.digest_key,
            sources=_secret_sources(self.registry),
        )
        self._parse_documents(shown, text, ctx)
        self.secrets = self.secrets or bool(ctx.resolved)
        return bool(ctx.resolved)

    def _parse_documents(self, shown: str, text: str, ctx: PrepareContext) -> None:
        from reconciler import yamlload  # only a tree not found in the cache is parsed

        declared = 0
        try:
            for node, data in self._documents(text):
                declared += data is not None
                self._add_document(shown, node, data, ctx)
        except yamlload.MarkedYAMLError as exc:
            line, problem = yamlload.where(exc)
            self.add_issue(Issue(shown, line, "", f"invalid YAML: {problem}"))
            return
        except yamlload.YAMLError as exc:
            self.add_issue(Issue(shown, None, "", f"invalid YAML: {exc}"))
            return
        except RecursionError:  # past every depth check: still an error, never a crash
            self.add_issue(Issue(shown, None, "", "invalid YAML: nested too deeply"))
            return
        # 0094: an empty file is what a truncated write leaves, and loading it as
        # zero resources would prune everything the file declared
        marked = text.partition("\n")[0].strip("\ufeff \t\r") == EMPTY_MARK
        if not declared and not marked:
            self.add_issue(Issue(shown, None, "", _EMPTY_FILE))
        elif declared and marked:
            self.add_issue(Issue(shown, 1, "", _MARKED_BUT_DECLARES))

    def _issue(
        self,
        file: str,
        node: Node,
        path: tuple[str | int, ...],
        message: str,
        via: str | None = None,
    ) -> None:
        from reconciler.yamlload import line_of

        via = self.frame.via if via is None else via
        self.add_issue(Issue(file, line_of(node, path), _field(path), message, via))

    def _validation(
        self,
        file: str,
        node: Node,
        prefix: tuple[str, ...],
        model: type[BaseModel],
        exc: ValidationError,
        via: str | None = None,
    ) -> None:
        for error in exc.errors(include_url=False):
            owner, loc = _model_at(model, tuple(error["loc"]))
            path = prefix + loc
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                known = ", ".join(f.alias or name for name, f in owner.model_fields.items())
                message = f"unknown field; expected one of {known}"
            elif error["type"] == "missing":
                message = "required field is missing"
            elif error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                tags = ", ".join(_variants(owner))
                found = error.get("ctx", {}).get("tag")
                field = error.get("ctx", {}).get("discriminator", "'type'").strip("'")
                path += (field,)
                message = (
                    f"expected one of {tags}, found {found!r}"
                    if found is not None
                    else f"required field is missing; one of {tags}"
                )
            self._issue(file, node, path, message, via)

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
        if provider is None and kind != BUNDLE_KIND:
            known = ", ".join(sorted([*self.registry, BUNDLE_KIND]))
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
            where = ""
            if first is not None:
                made = f", made by {first.instance}" if first.instance else ""
                where = f" (first defined at {first.location}{made})"
                if first.instance or self.frame.instance:
                    where += "; give bundle instances different namePrefix values"
            self._issue(file, node, ("metadata", "name"), f"duplicate resource id {rid}{where}")
            return
        self.seen_ids.add(rid)
        if kind == BUNDLE_KIND:
            if ok:
                self._instantiate(file, node, data, ctx, name, location)
            return
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
        try:
            dumped = spec.model_dump_json().encode()
        except PydanticSerializationError as exc:  # such as !!binary that is not UTF-8
            message = ctx.mask(f"a value cannot be stored as JSON: {exc}")
            self._issue(file, node, ("spec",), message)
            return
        self._count(file, location.line, len(dumped))
        spec_hash = hashlib.sha256(dumped).hexdigest()[:32]
        labels = data["metadata"].get("labels") or {}
        self.resources[rid] = Resource(
            str(kind), name, spec, policy, spec_hash, location, labels, self.frame.instance
        )

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

    def _via(self, res: Resource) -> str:
        return self.via_of.get(res.instance, "")

    # ------------------------------------------------------------ bundles (docs/bundles.md)

    def _instantiate(
        self,
        file: str,
        node: Node,
        data: dict[str, Any],
        ctx: PrepareContext,
        name: str,
        location: Location,
    ) -> None:
        """Expand one `Bundle` document: check its values against the bundle's
        parameters, fill them into copies of the bundle's documents, patch and
        prefix those, and add them as documents of this revision."""
        from reconciler import bundles

        if data.get("policy") is not None:
            message = "a Bundle has no policy: set its resources' policy with patches"
            self._issue(file, node, ("policy",), message)
            return
        spec_data = data.get("spec")
        if not isinstance(spec_data, dict):
            problem = "expected a mapping" if spec_data is not None else "required field is missing"
            self._issue(file, node, ("spec",), problem)
            return
        try:
            spec = bundles.BundleSpec.model_validate(spec_data)
        except ValidationError as exc:
            self._validation(file, node, ("spec",), bundles.BundleSpec, exc)
            return
        frame, limits = self.frame, self.limits
        iid = resource_id(BUNDLE_KIND, name)
        if len(self.instances) >= limits.max_bundle_instances:
            message = f"over the limit of {limits.max_bundle_instances} bundle instances"
            self._issue(file, node, (), f"{message} (max_bundle_instances)")
            raise _Stop
        if len(frame.chain) >= limits.max_bundle_depth:
            message = f"bundles nested deeper than {limits.max_bundle_depth} (max_bundle_depth)"
            self._issue(file, node, ("spec", "source"), message)
            return
        found = self._locate(file, node, spec.source, ctx)
        if found is None:
            return
        tree, key = found
        if key in frame.chain:
            loop = [f"{t}{'//' if t else ''}{d}" for t, d in (*frame.chain, key)]
            cycle = " -> ".join(loop[frame.chain.index(key) :])
            self._issue(file, node, ("spec", "source"), f"bundle cycle: {cycle}")
            return
        via = f"{iid} at {location}" + (f", in {frame.via}" if frame.via else "")
        bundle = self._bundle(tree, key, via)
        if bundle is None:
            return
        values, problems = bundles.check_values(bundle.definition, spec.values)
        for where, message in problems:
            self._issue(file, node, ("spec", "values", *where), message)
        if problems:
            return
        prefix = frame.prefix + spec.name_prefix
        scope = {"values": values, "bundle": {"name": name, "prefix": prefix}}
        params = bundle.definition.parameters
        secret = frozenset(p for p, param in params.items() if param.type == "secret")
        filled: list[Any] = []
        for doc in bundle.documents:
            try:
                filled.append(bundles.fill(doc.data, scope, secret, limits.max_expanded_bytes))
            except bundles.SubstitutionError as exc:
                self._issue(doc.shown, doc.node, exc.path, str(exc), via)
        if len(filled) != len(bundle.documents):
            return
        problems_at = bundles.apply_patches(filled, spec.patches, _identity)
        for where_at, message in problems_at:
            self._issue(file, node, ("spec", "patches", *where_at), message)
        if problems_at:
            return
        local = {f"{k}/{n}" for k, n in map(_identity, filled) if isinstance(n, str)}
        self.instances[iid] = Instance(
            iid,
            tree.source,
            location,
            _plain_json(values),
            frame.instance,
            tree.ref,
            tree.commit,
        )
        self.via_of[iid] = via
        self.frame = _Frame(tree.root, tree.name, tree.shown, prefix, iid, via, (*frame.chain, key))
        try:
            for doc, document in zip(bundle.documents, filled, strict=True):
                if prefix:
                    document = self._renamed(document, prefix, local)
                doc_ctx = PrepareContext(
                    doc.path, tree.root, digest_key=self.digest_key, sources=ctx.sources
                )
                self._add_document(doc.shown, doc.node, document, doc_ctx)
                self.secrets = self.secrets or bool(doc_ctx.resolved)
        finally:
            self.frame = frame

    def _locate(
        self, file: str, node: Node, source: Any, ctx: PrepareContext
    ) -> tuple[_Tree, tuple[str, str]] | None:
        """The tree and directory a `Bundle`'s source names, checked to be a
        bundle; None after reporting why not."""
        from reconciler import bundles

        frame = self.frame
        where = ("spec", "source")
        if isinstance(source, bundles.RemoteSource):
            if self.remote is None:
                self._issue(file, node, where, "remote bundles cannot be fetched here")
                return None
            subdir = os.path.normpath(source.path.strip("/")) if source.path != "." else "."
            if subdir.startswith("..") or "\0" in source.path:
                self._issue(file, node, (*where, "path"), "the path leads outside the repository")
                return None
            asked = (source.repo, source.ref, subdir)
            if asked not in self.fetched:
                if len(self.fetched) >= self.limits.max_remote_bundles:
                    limit = self.limits.max_remote_bundles
                    message = (
                        f"over the limit of {limit} remote bundle sources (max_remote_bundles)"
                    )
                    self._issue(file, node, where, message)
                    return None
                self.fetched.add(asked)
            try:
                fetched = self.remote.fetch(source.repo, source.ref, subdir)
            except bundles.BundleSourceError as exc:
                self._issue(file, node, where, str(exc))
                return None
            self.floating = self.floating or not bundles.pinned(source.ref)
            repo = _redacted(source.repo)
            name = f"{repo}//{subdir}@{fetched.commit}"
            tree = _Tree(
                fetched.root,
                name,
                f"{repo}//{subdir}@{fetched.commit[:12]}/",
                f"{repo}//{subdir}",
                source.ref,
                fetched.commit,
            )
            directory = fetched.root
        else:
            # absolute before comparing: Path("../x").is_relative_to(".") is true
            top = Path(os.path.abspath(frame.root))
            directory = Path(os.path.abspath(ctx.manifest.parent / source))
            if not directory.is_relative_to(top):
                self._issue(file, node, where, f"{source} leads outside the config tree")
                return None
            relative = str(directory.relative_to(top))
            real, real_root = os.path.realpath(directory), os.path.realpath(top)
            if real != real_root and not real.startswith(real_root + os.sep):
                message = f"{source} is a symbolic link to outside the config tree"
                self._issue(file, node, where, message)
                return None
            shown = frame.shown + relative
            tree = _Tree(top, frame.tree, frame.shown, shown, "", "")
        if not (directory / bundles.DEFINITION_FILE).is_file():
            what = "no such directory" if not directory.is_dir() else "no bundle.yaml in it"
            self._issue(file, node, where, f"{tree.source}: {what}")
            return None
        rel = "." if directory == tree.root else str(directory.relative_to(tree.root))
        return dataclasses.replace(tree, directory=directory), (tree.name, rel)

    def _bundle(self, tree: _Tree, key: tuple[str, str], via: str) -> _Bundle | None:
        """A bundle's definition and parsed documents, read once per load; None if
        invalid (reported the first time, at its files)."""
        if key in self.bundles:
            return self.bundles[key]
        from reconciler import bundles

        self.bundles[key] = None
        before = len(self.issues)
        files, _, _ = _read_tree(tree.directory, tree.root, self.limits)
        definition: bundles.Definition | None = None
        documents: list[_BundleDoc] = []
        for found in files:
            shown = tree.shown + found.shown
            if found.raw is None:
                self.add_issue(Issue(shown, None, "", found.problem or "unreadable", via))
                continue
            try:
                text = found.raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.add_issue(Issue(shown, None, "", f"not UTF-8 text (byte {exc.start})", via))
                continue
            self.sources[shown] = found.raw
            parsed = self._bundle_file(shown, text, via)
            if parsed is None:
                continue
            if found.path == tree.directory / bundles.DEFINITION_FILE:
                definition = self._definition(shown, parsed, via)
            else:
                documents += [
                    _BundleDoc(found.path, shown, n, d) for n, d in parsed if d is not None
                ]
        if definition is None or len(self.issues) != before:
            return None
        bundle = _Bundle(definition, tuple(documents))
        self.bundles[key] = bundle
        return bundle

    def _bundle_file(self, shown: str, text: str, via: str) -> list[tuple[Node, Any]] | None:
        from reconciler import yamlload

        try:
            parsed = list(self._documents(text))
        except yamlload.MarkedYAMLError as exc:
            line, problem = yamlload.where(exc)
            self.add_issue(Issue(shown, line, "", f"invalid YAML: {problem}", via))
            return None
        except (yamlload.YAMLError, RecursionError) as exc:
            problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            self.add_issue(Issue(shown, None, "", f"invalid YAML: {problem}", via))
            return None
        declared = any(d is not None for _, d in parsed)
        marked = text.partition("\n")[0].strip("\ufeff \t\r") == EMPTY_MARK
        if not declared and not marked:
            self.add_issue(Issue(shown, None, "", _EMPTY_FILE, via))
            return None
        return parsed

    def _definition(
        self, shown: str, parsed: list[tuple[Node, Any]], via: str
    ) -> Definition | None:
        from reconciler import bundles

        found = [(n, d) for n, d in parsed if d is not None]
        if len(found) != 1:
            message = "expected one document (apiVersion, kind: BundleDefinition, parameters)"
            self.add_issue(Issue(shown, None, "", message, via))
            return None
        node, data = found[0]
        try:
            return bundles.Definition.model_validate(data)
        except ValidationError as exc:
            self._validation(shown, node, (), bundles.Definition, exc, via)
            return None

    def _renamed(self, data: Any, prefix: str, local: set[str]) -> Any:
        """A bundle's document with `prefix` before its name and before each name
        it uses of another document of the same bundle (dependsOn and the
        references its provider declares); names outside the bundle are kept."""
        if not isinstance(data, dict):
            return data
        kind, name = _identity(data)
        if isinstance(name, str):
            data["metadata"] = {**data["metadata"], "name": prefix + name}

        def renamed(value: Any) -> Any:
            if isinstance(value, str) and value in local:
                k, _, n = value.partition("/")
                return f"{k}/{prefix}{n}"
            return value

        policy = data.get("policy")
        if isinstance(policy, dict) and isinstance(policy.get("dependsOn"), list):
            data["policy"] = {**policy, "dependsOn": [renamed(d) for d in policy["dependsOn"]]}
        provider = self.registry.get(kind) if isinstance(kind, str) else None
        spec = data.get("spec")
        if provider is None or not isinstance(spec, dict) or not _refers(provider):
            return data
        try:
            model = provider.Spec.model_validate(spec)
        except ValidationError:
            return data  # reported when the document is added
        for field, target in provider.references(model):
            if target not in local:
                continue
            holder: Any = spec
            for part in field[:-1]:
                holder = _child(holder, part)
            last = field[-1]
            value = _child(holder, last)
            if value is None:
                continue
            if value == target:
                holder[last] = renamed(value)
            elif value == target.partition("/")[2]:
                holder[last] = prefix + value
        return data

    def _references(self, rid: ResourceId, res: Resource) -> list[ResourceId]:
        """The resources the spec names (its connection, a command's refreshOn):
        implicit dependencies, each checked to exist and to be of a usable kind."""
        provider = self.registry[res.kind]
        found: list[ResourceId] = []
        for field, target in provider.references(res.spec):
            where = ("spec", *field)
            other = self.resources.get(target)
            if other is None:
                if target not in self.seen_ids:
                    message = f"names {target}, which is not defined in this revision"
                    self._issue(res.location.file, self._node(rid), where, message, self._via(res))
                continue  # defined but invalid: its own error says why
            if target == rid:
                self._issue(
                    res.location.file, self._node(rid), where, "names itself", self._via(res)
                )
                continue
            problem = provider.accepts(field, other)
            if problem is not None:
                self._issue(res.location.file, self._node(rid), where, problem, self._via(res))
                continue
            found.append(target)
        return found

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
                    self._via(res),
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
                        self._via(res),
                    )
                elif dep == rid:
                    self._issue(
                        res.location.file,
                        self._node(rid),
                        ("policy", "dependsOn", i),
                        "a resource cannot depend on itself",
                        self._via(res),
                    )
            deps = [d for d in res.policy.depends_on if d in self.resources and d != rid]
            if rid in parents:
                deps.append(parents[rid])
            deps += self._references(rid, res)
            edges[rid] = tuple(dict.fromkeys(deps))
        cycle = graph.find_cycle(edges)
        if cycle is not None:
            first = self.resources[cycle[0]]
            self._issue(
                first.location.file,
                self._node(cycle[0]),
                ("policy", "dependsOn"),
                "dependency cycle: " + " -> ".join(cycle),
                self._via(first),
            )
        return edges


@dataclass(frozen=True, slots=True)
class _Frame:
    """Where the documents being added come from: the tree itself, or a bundle
    instance (its tree, prefix, id and the chain of bundles around it)."""

    root: Path
    """What a local bundle source must stay inside: the config tree, or the
    directory of the remote bundle being expanded."""
    tree: str
    """"" for the config tree; `repo//path@commit` for a remote bundle's."""
    shown: str
    """What goes before a path relative to `root` in an error (empty for the tree)."""
    prefix: str = ""
    instance: str = ""
    via: str = ""
    chain: tuple[tuple[str, str], ...] = ()
    """The bundles being expanded, outermost first, as (tree, directory)."""


@dataclass(frozen=True, slots=True)
class _Tree:
    """Where a bundle's files are."""

    root: Path
    name: str
    shown: str
    source: str
    """How the instance names its bundle (`bundles/webapp`, `repo//path`)."""
    ref: str
    commit: str
    directory: Path = Path()


@dataclass(frozen=True, slots=True)
class _BundleDoc:
    path: Path
    shown: str
    node: Node
    data: Any


@dataclass(frozen=True, slots=True)
class _Bundle:
    definition: Definition
    documents: tuple[_BundleDoc, ...]


def _identity(document: Any) -> tuple[Any, Any]:
    """(kind, name) of a document as written, either None where it has none."""
    if not isinstance(document, dict):
        return None, None
    metadata = document.get("metadata")
    return document.get("kind"), metadata.get("name") if isinstance(metadata, dict) else None


def _child(holder: Any, part: str | int) -> Any:
    """`holder[part]` in parsed YAML, or None where there is no such item."""
    try:
        return holder[part]
    except (KeyError, IndexError, TypeError):
        return None


def _refers(provider: Provider[Any]) -> bool:
    """Whether specs of this kind may name other resources (see Provider.references)."""
    own = getattr(type(provider).references, "__func__", type(provider).references)
    return provider.connection_type is not None or own is not Provider.references


def _plain_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values as JSON holds them (a date as its text), for the cache and the API."""
    return dict(json.loads(json.dumps(values, default=str)))


def _redacted(url: str) -> str:
    """A repository URL without the credentials it may carry."""
    return re.sub(r"(?<=://)[^/@]*@", "", url)


def _secret_sources(registry: Mapping[str, Provider[Any]]) -> SecretSources | None:
    """The operator's allow-list of secret sources, from the providers' settings."""
    settings = getattr(registry, "settings", None)  # a Registry's: no provider imported
    if settings is None:
        first = next(iter(registry.values()), None)
        settings = None if first is None else first.settings
    return None if settings is None else settings.secret_sources


def _variants(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The members of a RootModel over a tagged union, by tag (`type: postgres`)."""
    if not issubclass(model, RootModel):
        return {}
    root = model.model_fields["root"]
    tag = root.discriminator
    if not isinstance(tag, str):
        return {}
    found: dict[str, type[BaseModel]] = {}
    for member in typing.get_args(root.annotation):
        if (
            isinstance(member, type)
            and issubclass(member, BaseModel)
            and tag in member.model_fields
        ):
            for value in typing.get_args(member.model_fields[tag].annotation):
                found[str(value)] = member
    return found


def _model_at(
    model: type[BaseModel], loc: tuple[Any, ...]
) -> tuple[type[BaseModel], tuple[Any, ...]]:
    """The model that holds the field an error's `loc` ends at, and the loc as a
    path in the document: the tag pydantic puts in the loc of a tagged union's
    member (`("postgres", "host")`) is not a key of the document."""
    path: list[Any] = []
    for i, part in enumerate(loc):
        variants = _variants(model)
        if variants:
            if part in variants:
                model = variants[part]
                continue
            return model, (*path, *loc[i:])
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            field = next((f for f in model.model_fields.values() if f.alias == part), None)
        path.append(part)
        if field is None or i == len(loc) - 1:
            return model, (*path, *loc[i + 1 :])
        inner = [
            t
            for t in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if not inner:
            return model, (*path, *loc[i + 1 :])
        model = inner[0]
    return model, tuple(path)


@dataclass(frozen=True, slots=True)
class _File:
    path: Path
    shown: str
    raw: bytes | None
    """Bytes of a manifest; None for other files (hashed, not kept) and errors."""
    problem: str | None = None
    digest: bytes = b""


@dataclass
class _Walk:
    """The files of a tree, found without following a link out of it."""

    root: Path
    limits: Limits
    files: list[tuple[Path, os.stat_result]] = dataclasses.field(default_factory=list)
    problems: list[_File] = dataclasses.field(default_factory=list)
    total: int = 0

    def walk(self, top: Path) -> None:
        limits = self.limits
        pending = [top]
        while pending:
            directory = pending.pop()
            try:
                with os.scandir(directory) as entries:
                    listed = list(entries)
            except OSError:
                continue  # unreadable directory: nothing of it can be loaded
            for entry in listed:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                    continue
                try:
                    st = os.stat(path)  # a link to a file is read as the file ...
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if entry.is_symlink() and not self._inside(path):
                    # ... but only inside the tree: never a file of the host
                    if path.suffix in (".yaml", ".yml"):
                        problem = "a symbolic link to outside the config tree; not read"
                        self.problems.append(_File(path, self._shown(path), None, problem))
                    continue
                self.files.append((path, st))
                self.total += st.st_size
                if len(self.files) > limits.max_files:
                    raise self._over(path, f"over {limits.max_files} files (max_files)")
                if self.total > limits.max_tree_bytes:
                    raise self._over(
                        path, f"the tree is over {limits.max_tree_bytes} bytes (max_tree_bytes)"
                    )

    def _inside(self, path: Path) -> bool:
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        root = self.root.resolve()
        return target == root or root in target.parents

    def _shown(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path != self.root else path.name

    def _over(self, path: Path, problem: str) -> ManifestError:
        return ManifestError([Issue(self._shown(path), None, "", problem)])


def _walk(path: Path, root: Path, limits: Limits) -> _Walk:
    """The files of the tree at `path` (or the file itself); raises ManifestError
    past `max_files` or `max_tree_bytes`."""
    walk = _Walk(root, limits)
    if path.is_dir():
        walk.walk(path)
    else:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
            walk.problems.append(_File(path, path.name, None, "not a regular file"))
        else:
            walk.files.append((path, st))
            walk.total = st.st_size
    walk.files.sort(key=lambda item: item[0])
    return walk


def tree_files(root: Path) -> list[Path]:
    """Every file of a config tree in a stable order; hidden files and directories
    (such as .git), and links to files outside the tree, skipped. Manifests are
    the `*.yaml`/`*.yml` among them."""
    base = root if root.is_dir() else root.parent
    return [p for p, _ in _walk(root, base, _NO_LIMITS).files]


def _read_tree(path: Path, root: Path, limits: Limits) -> tuple[list[_File], str, str]:
    """Every file of the tree (manifests read, others hashed), the tree digest and
    the digest of the non-manifest files (sources, templates) alone."""
    digest = hashlib.sha256()
    others = hashlib.sha256()
    walk = _walk(path, root, limits)
    files = list(walk.problems)
    bundled = _bundle_dirs(path, walk.files)
    for file, st in walk.files:
        shown = str(file.relative_to(root)) if file != root else file.name
        manifest = file == path or (
            file.suffix in (".yaml", ".yml") and not (bundled and _in_bundle(file, path, bundled))
        )
        if st.st_size > limits.max_file_bytes:
            problem = (
                f"file is {st.st_size} bytes, over the limit of {limits.max_file_bytes} "
                "(max_file_bytes)"
            )
            files.append(_File(file, shown, None, problem))
            continue
        try:
            with file.open("rb") as handle:
                if not manifest:
                    file_hash = hashlib.file_digest(handle, "sha256").digest()
                    digest.update(shown.encode() + b"\0" + file_hash)
                    others.update(shown.encode() + b"\0" + file_hash)
                    continue
                raw = _read_at_most(handle, st.st_size, limits.max_file_bytes)
        except OSError as exc:
            if manifest:  # other files matter only when referenced; prepare says so
                files.append(_File(file, shown, None, f"cannot read: {exc.strerror}"))
            continue
        if len(raw) > limits.max_file_bytes:
            problem = f"file is over the limit of {limits.max_file_bytes} bytes (max_file_bytes)"
            files.append(_File(file, shown, None, problem))
            continue
        file_hash = hashlib.sha256(raw).digest()
        digest.update(shown.encode() + b"\0" + file_hash)
        files.append(_File(file, shown, raw, digest=file_hash))
    return files, digest.hexdigest(), others.hexdigest()


def _bundle_dirs(path: Path, files: list[tuple[Path, os.stat_result]]) -> set[Path]:
    """The bundle directories (holding a bundle.yaml) strictly below `path`: their
    files are read only when a `Bundle` instantiates them (hashed all the same)."""
    return {f.parent for f, _ in files if f.name == "bundle.yaml" and f.parent != path}


def _in_bundle(file: Path, top: Path, bundled: set[Path]) -> bool:
    for parent in file.parents:
        if parent == top:
            return False
        if parent in bundled:
            return True
    return False


def _read_at_most(handle: BinaryIO, size: int, limit: int) -> bytes:
    """The file's bytes, or more than `limit` of them if it has more: read as
    `size` (its size when listed) and beyond, in case it has grown since."""
    data = handle.read(size + 1)
    if len(data) <= size:
        return data
    chunks = [data]
    total = len(data)
    while total <= limit:
        chunk = handle.read(min(1 << 20, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


_NO_LIMITS = Limits(
    max_file_bytes=1 << 62, max_tree_bytes=1 << 62, max_files=1 << 62, max_resources=1 << 62
)


def tree_digest(path: Path) -> str:
    """The digest a load of `path` would use as its revision (all files' bytes)."""
    root = path if path.is_dir() else path.parent
    digest = hashlib.sha256()
    for file, _ in _walk(path, root, _NO_LIMITS).files:  # streamed: nothing is kept
        shown = str(file.relative_to(root)) if file != root else file.name
        try:
            with file.open("rb") as handle:
                file_hash = hashlib.file_digest(handle, "sha256").digest()
        except OSError:
            continue  # as a load leaves it out (and reports it)
        digest.update(shown.encode() + b"\0" + file_hash)
    return digest.hexdigest()


def load(
    path: Path,
    registry: Mapping[str, Provider[Any]],
    *,
    limits: Limits | None = None,
    revision: str | None = None,
    cache: Cache | None = None,
    memo: ParseMemo | None = None,
    remote: RemoteFetcher | None = None,
) -> DesiredState:
    """Load and validate every manifest under `path`; raise ManifestError.

    `cache` keeps whole validated trees on disk (an unchanged tree is not parsed);
    `memo` keeps parsed files in memory (a changed tree parses only changed files);
    `remote` fetches remote bundles (without it, a remote bundle is an error).
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
            return state
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
    state = DesiredState(revision, docs.resources, edges, docs.instances)
    if cache is not None and cache.write and not docs.secrets and not docs.floating:
        _cache.write(cache, cache_key, state)
    return state


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
