"""Validation of the documents of one revision: each file parsed (or taken from
the parse memo), each document's envelope, metadata, policy and spec checked
(the spec by its provider's model and `prepare`), then the checks across
documents: references, dependencies, paths and cycles."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from reconciler import graph
from reconciler.manifests.expand import _Expansion
from reconciler.manifests.issues import (
    _EMPTY_FILE,
    _MARKED_BUT_DECLARES,
    EMPTY_MARK,
    Issue,
    _Reparse,
)
from reconciler.model import (
    API_VERSION,
    BUNDLE_KIND,
    DEFAULT_POLICY,
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

_ENVELOPE = ("apiVersion", "kind", "metadata", "spec", "policy")
_METADATA = ("name", "labels", "annotations")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")


class _Documents(_Expansion):
    """Collects resources and issues while walking the files of one revision."""

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


def _secret_sources(registry: Mapping[str, Provider[Any]]) -> SecretSources | None:
    """The operator's allow-list of secret sources, from the providers' settings."""
    settings = getattr(registry, "settings", None)  # a Registry's: no provider imported
    if settings is None:
        first = next(iter(registry.values()), None)
        settings = None if first is None else first.settings
    return None if settings is None else settings.secret_sources
