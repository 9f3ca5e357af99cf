"""Validation of the documents of one revision: each file parsed (or taken from
the parse memo), each document's envelope, metadata, policy and spec checked
(the spec by its provider's model and `prepare`), then the checks across
documents: references, dependencies, paths and cycles."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticSerializationError

from reconciler import graph, shards
from reconciler.manifests import envelope as _envelope
from reconciler.manifests.envelope import Envelope
from reconciler.manifests.expand import _Expansion
from reconciler.manifests.issues import (
    Issue,
    _Reparse,
)
from reconciler.model import (
    BUNDLE_KIND,
    SHARD_KIND,
    Location,
    PrepareContext,
    Provider,
    Resource,
    ResourceId,
    SecretSources,
    Shard,
    SpecError,
    resource_id,
)

if TYPE_CHECKING:
    from yaml.nodes import Node

_BODY = tuple((field,) for field in _envelope.BODY)


class _Documents(_Expansion):
    """Collects resources and issues while walking the files of one revision."""

    @functools.cached_property
    def _kinds(self) -> dict[str, Any]:
        """The envelope's validation context: the kinds a document may name."""
        return {"kinds": self.registry}

    @functools.cached_property
    def shards(self) -> dict[str, Shard]:
        """The `Shard` documents of the revision, by name."""
        return {}

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
        instances, declared = len(self.instances), len(self.shards)
        secrets = self._parse_file(path, shown, raw)
        # a file that resolved secrets is parsed again each time: they may have
        # changed; so is one with bundles (its resources come from other files)
        # and one with shards (the memo holds resources only)
        bundled = len(self.instances) != instances or len(self.shards) != declared
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
        try:
            for node, data in self._parsed(shown, text):
                self._add_document(shown, node, data, ctx)
        except RecursionError:  # past every depth check: still an error, never a crash
            self.add_issue(Issue(shown, None, "", "invalid YAML: nested too deeply"))

    def _add_document(self, file: str, node: Node, data: Any, ctx: PrepareContext) -> None:
        if data is None:
            return
        try:
            envelope: Envelope | None = Envelope.model_validate(data, context=self._kinds)
            found: list[ErrorDetails] = []
            head = found
        except ValidationError as exc:
            envelope, found = None, _envelope.errors(exc)
            head = [e for e in found if e["loc"][:1] not in _BODY]
            self._validation(file, node, (), Envelope, head)
            if not isinstance(data, dict) or any(e["loc"][:1] == ("metadata",) for e in head):
                return  # no id to go on with
        kind, name = data.get("kind"), data["metadata"]["name"]
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
            elif kind == SHARD_KIND and name in self.shards:
                where = f" (first defined at {self.shards[name].location})"
            self._issue(file, node, ("metadata", "name"), f"duplicate resource id {rid}{where}")
            return
        self.seen_ids.add(rid)
        if kind == BUNDLE_KIND:
            if not head:  # its spec and policy are the bundle's to check
                self._instantiate(file, node, data, ctx, name, location)
            return
        if kind == SHARD_KIND:
            if not head:
                self._declare_shard(file, node, data, name, location)
            return
        if found:
            self._validation(file, node, (), Envelope, [e for e in found if e["loc"][:1] in _BODY])
        provider = self.registry.get(kind) if isinstance(kind, str) else None
        spec_data = data.get("spec")
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
        if envelope is None:
            return
        try:
            dumped = spec.model_dump_json().encode()
        except PydanticSerializationError as exc:  # such as !!binary that is not UTF-8
            message = ctx.mask(f"a value cannot be stored as JSON: {exc}")
            self._issue(file, node, ("spec",), message)
            return
        self._count(file, location.line, len(dumped))
        spec_hash = hashlib.sha256(dumped).hexdigest()[:32]
        labels = envelope.metadata.labels or {}
        if self.frame.labels:  # made by a bundle instance: its labels win (0153)
            labels = {**labels, **self.frame.labels}
        self.resources[rid] = Resource(
            envelope.kind,
            name,
            spec,
            envelope.policy,
            spec_hash,
            location,
            labels,
            self.frame.instance,
        )

    def _declare_shard(
        self, file: str, node: Node, data: dict[str, Any], name: str, location: Location
    ) -> None:
        """A `Shard` document: a selector of the resources one daemon enforces, not
        a resource (reconciler.shards)."""
        if self.frame.instance:
            message = "a Shard cannot be declared in a bundle: shards belong to the tree"
            self._issue(file, node, ("kind",), message)
            return
        if data.get("policy") is not None:
            self._issue(file, node, ("policy",), "a Shard has no policy")
            return
        try:
            spec = shards.ShardSpec.model_validate(data.get("spec"))
        except ValidationError as exc:
            self._validation(file, node, ("spec",), shards.ShardSpec, exc)
            return
        self.shards[name] = shards.shard(name, location, spec)

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
        if self.shards:
            self._crossing(edges)
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

    def _crossing(self, edges: Mapping[ResourceId, tuple[ResourceId, ...]]) -> None:
        """Each dependency across shards is an error at the dependent's document."""
        claimed = shards.claims(self.resources, self.shards)
        for rid, dep, message in shards.crossing(claimed, edges):
            res = self.resources[rid]
            explicit = res.policy.depends_on
            where: tuple[str | int, ...] = (
                ("policy", "dependsOn", explicit.index(dep)) if dep in explicit else ()
            )
            if not where:
                message += " (an implicit dependency: a path under it, or a reference)"
            self._issue(res.location.file, self._node(rid), where, message, self._via(res))


def _secret_sources(registry: Mapping[str, Provider[Any]]) -> SecretSources | None:
    """The operator's allow-list of secret sources, from the providers' settings."""
    settings = getattr(registry, "settings", None)  # a Registry's: no provider imported
    if settings is None:
        first = next(iter(registry.values()), None)
        settings = None if first is None else first.settings
    return None if settings is None else settings.secret_sources
