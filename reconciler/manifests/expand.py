"""Bundle expansion (docs/bundles.md): a `Bundle` document names a bundle
directory (in the tree or a remote repository); its documents are read once per
load, filled with the instance's values, patched, prefixed and added as documents
of the revision, each error naming the instances it was found in."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from reconciler.manifests.collect import _Collector, _Frame
from reconciler.manifests.issues import Issue, _Stop
from reconciler.manifests.limits import Limits
from reconciler.manifests.tree import _read_tree
from reconciler.model import (
    BUNDLE_KIND,
    Instance,
    Location,
    PrepareContext,
    Provider,
    resource_id,
)

if TYPE_CHECKING:
    from yaml.nodes import Node

    from reconciler.bundles import Definition, RemoteFetcher
    from reconciler.manifests.collect import ParseMemo


class _Expansion(_Collector):
    """The bundle half of a load: `Bundle` documents expanded into documents."""

    def __init__(
        self,
        root: Path,
        registry: Mapping[str, Provider[Any]],
        limits: Limits,
        memo: ParseMemo | None = None,
        digest_key: Callable[[], bytes] | None = None,
        remote: RemoteFetcher | None = None,
    ) -> None:
        super().__init__(root, registry, limits, memo, digest_key, remote)
        self.bundles: dict[tuple[str, str], _Bundle | None] = {}
        """Bundles read in this load, by (tree, directory); None: invalid (reported)."""
        self.fetched: set[tuple[str, str, str]] = set()
        """The remote sources asked for in this load (`max_remote_bundles`)."""
        self.floating = False
        """Whether a remote bundle follows a branch or tag: the tree is then never
        cached, as the same manifests can give another revision."""

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
        own = data["metadata"].get("labels") or {}
        self.frame = _Frame(
            tree.root,
            tree.name,
            tree.shown,
            prefix,
            iid,
            via,
            (*frame.chain, key),
            {**own, **frame.labels},  # an outer instance's labels win over an inner's
        )
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
        """The documents of one file of a bundle; None if it has an error."""
        before = len(self.issues)
        parsed = list(self._parsed(shown, text, via))
        return parsed if len(self.issues) == before else None

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
