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

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler import graph
from reconciler.model import (
    API_VERSION,
    DEFAULT_POLICY,
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


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_PLAIN_TAGS: dict[str, str] = {}
"""Tags of plain scalars already resolved: manifests repeat the same keys."""


class _Loader(yaml.CSafeLoader):
    """libyaml parsing and composition; tags of plain scalars memoized (the safe
    resolver has no path resolvers, so non-plain nodes take the default tags)."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode:
            if not implicit[0]:
                return _STR
            tag = _PLAIN_TAGS.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
                if len(_PLAIN_TAGS) < 4096:
                    _PLAIN_TAGS[value] = tag
            return tag
        return _MAP if kind is MappingNode else _SEQ


def _construct(loader: _Loader, node: Node) -> Any:
    """Build Python data from a composed node: plain dicts, lists and str directly,
    other tags through PyYAML's safe constructors; duplicate keys are errors."""
    cls = type(node)
    tag = node.tag
    if cls is ScalarNode:
        return node.value if tag == _STR else loader.construct_object(node, deep=True)
    if cls is SequenceNode and tag == _SEQ:
        return [_construct(loader, child) for child in node.value]
    if not isinstance(node, MappingNode) or tag != _MAP:
        return loader.construct_object(node, deep=True)
    mapping: dict[Any, Any] = {}
    own = node.value
    if any(key.tag == _MERGE for key, _ in own):
        own = [(k, v) for k, v in own if k.tag != _MERGE]
        loader.flatten_mapping(node)  # merged pairs first; the mapping's own keys win
        for key_node, value_node in node.value[: len(node.value) - len(own)]:
            mapping[_construct(loader, key_node)] = _construct(loader, value_node)
    lines: dict[Any, int] = {}
    for key_node, value_node in own:
        key = _construct(loader, key_node)
        try:
            first = lines.get(key)
        except TypeError:
            raise _DuplicateKey(
                None, None, f"a mapping key must be a scalar, found {key!r}", key_node.start_mark
            ) from None
        if first is not None:
            raise _DuplicateKey(
                None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark
            )
        lines[key] = key_node.start_mark.line + 1
        mapping[key] = _construct(loader, value_node)
    return mapping


def _expanded_size(node: Node, limit: int) -> int | None:
    """Node count with every alias expanded, memoized per node; stops past `limit`.
    None when an alias refers to a node that contains it (a recursive structure)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if key in sizes:
            continue
        if isinstance(current, ScalarNode):
            sizes[key] = 1
            continue
        children: list[Node] = (
            [n for pair in current.value for n in pair]
            if isinstance(current, MappingNode)
            else list(current.value)
        )
        if children_done:
            open_nodes.discard(key)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > limit:
                return total
            sizes[key] = total
        elif key in open_nodes:
            return None
        else:
            open_nodes.add(key)
            stack.append((current, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(node)]


def _line_of(node: Node, path: tuple[str | int, ...]) -> int:
    """The line of the value at `path` in a document, as deep as it exists."""
    for part in path:
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == str(part):
                    node = value
                    break
            else:
                break
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


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


class _Documents:
    """Collects resources and issues while walking the files of one revision."""

    def __init__(self, root: Path, registry: Mapping[str, Provider[Any]], limits: Limits) -> None:
        self.root = root
        self.registry = registry
        self.limits = limits
        self.issues: list[Issue] = []
        self.resources: dict[ResourceId, Resource] = {}
        self.nodes: dict[ResourceId, Node] = {}
        self.seen_ids: set[ResourceId] = set()
        self.digest = hashlib.sha256()

    def add_file(self, path: Path) -> None:
        shown = str(path.relative_to(self.root)) if path != self.root else path.name
        try:
            size = path.stat().st_size
            if size > self.limits.max_file_bytes:
                self.issues.append(
                    Issue(
                        shown,
                        None,
                        "",
                        f"file is {size} bytes, over the limit of {self.limits.max_file_bytes}",
                    )
                )
                return
            raw = path.read_bytes()
        except OSError as exc:
            self.issues.append(Issue(shown, None, "", f"cannot read: {exc.strerror}"))
            return
        self.digest.update(shown.encode() + b"\0" + raw + b"\0")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.issues.append(Issue(shown, None, "", f"not UTF-8 text (byte {exc.start})"))
            return
        ctx = PrepareContext(manifest=path, config_root=self.root)
        check_aliases = "&" in text
        try:
            for node, data in self._documents(text, check_aliases):
                self._add_document(shown, node, data, ctx)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = None if mark is None else mark.line + 1
            problem = exc.problem or str(exc)
            if exc.context and not isinstance(exc, _DuplicateKey):
                problem = f"{problem} ({exc.context})"
            self.issues.append(Issue(shown, line, "", f"invalid YAML: {problem}"))
        except yaml.YAMLError as exc:
            self.issues.append(Issue(shown, None, "", f"invalid YAML: {exc}"))
        except RecursionError:
            self.issues.append(Issue(shown, None, "", "invalid YAML: nested too deeply"))

    def add_other(self, path: Path) -> None:
        try:
            self.digest.update(str(path.relative_to(self.root)).encode() + b"\0")
            with path.open("rb") as handle:
                self.digest.update(hashlib.file_digest(handle, "sha256").digest())
        except OSError:
            pass  # unreadable non-manifest files matter only if referenced; prepare says so

    def _documents(self, text: str, check_aliases: bool) -> Iterator[tuple[Node, Any]]:
        loader = _Loader(text)
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                if check_aliases:
                    size = _expanded_size(node, self.limits.max_nodes)
                    if size is None or size > self.limits.max_nodes:
                        problem = (
                            "an alias refers to a node that contains it (recursive structure)"
                            if size is None
                            else f"aliases expand to over {self.limits.max_nodes} nodes"
                        )
                        raise yaml.MarkedYAMLError(None, None, problem, node.start_mark)
                yield node, _construct(loader, node)
        finally:
            loader.dispose()

    def _issue(self, file: str, node: Node, path: tuple[str | int, ...], message: str) -> None:
        self.issues.append(Issue(file, _line_of(node, path), _field(path), message))

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
            self._issue(file, node, ("spec", exc.field), str(exc))
            return
        if not ok or policy is None:
            return
        spec_hash = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:32]
        labels = data["metadata"].get("labels") or {}
        self.resources[rid] = Resource(str(kind), name, spec, policy, spec_hash, location, labels)
        self.nodes[rid] = node

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
                    self.nodes[rid],
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
                        self.nodes[rid],
                        ("policy", "dependsOn", i),
                        f"depends on {dep}, which is not defined in this revision",
                    )
                elif dep == rid:
                    self._issue(
                        res.location.file,
                        self.nodes[rid],
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
                self.nodes[cycle[0]],
                ("policy", "dependsOn"),
                "dependency cycle: " + " -> ".join(cycle),
            )
        return edges


def load(
    path: Path,
    registry: Mapping[str, Provider[Any]],
    *,
    limits: Limits | None = None,
    revision: str | None = None,
) -> DesiredState:
    """Load and validate every manifest under `path`; raise ManifestError."""
    root = path if path.is_dir() else path.parent
    if not path.exists():
        raise ManifestError([Issue(str(path), None, "", "no such file or directory")])
    docs = _Documents(root, registry, limits or Limits())
    for file in tree_files(path):
        if file.suffix in (".yaml", ".yml") or path.is_file():
            docs.add_file(file)
        else:  # sources and templates are part of the revision too
            docs.add_other(file)
    edges = docs.cross_checks()
    if docs.issues:
        raise ManifestError(docs.issues)
    return DesiredState(
        revision=revision or docs.digest.hexdigest()[:12],
        resources=docs.resources,
        dependencies=edges,
    )
