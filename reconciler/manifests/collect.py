"""The state of one load and how it reports what is wrong: issues at a file,
line and field (a pydantic error translated to the document's own keys), the
limits of the whole revision, the parse memo, and the frame of the bundle
instance being expanded."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, RootModel, ValidationError
from pydantic_core import ErrorDetails

from reconciler.manifests.issues import (
    _EMPTY_FILE,
    _MARKED_BUT_DECLARES,
    _MAX_ISSUES,
    EMPTY_MARK,
    Issue,
    _field,
    _Stop,
)
from reconciler.manifests.limits import Limits
from reconciler.model import Instance, PrepareContext, Provider, Resource, ResourceId

if TYPE_CHECKING:
    from yaml.nodes import Node

    from reconciler.bundles import RemoteFetcher


@dataclass
class ParseMemo:
    """Parsed manifests by file content, kept by a long-running caller (the daemon)
    so that a new revision parses only the files that changed. Entries are valid
    for one `context` (providers, their settings, the non-manifest files)."""

    context: str = ""
    files: dict[tuple[str, bytes], list[Resource]] = dataclasses.field(default_factory=dict)
    spec_bytes: dict[tuple[str, bytes], int] = dataclasses.field(default_factory=dict)
    """What the specs of each file in `files` count against `Limits.max_spec_bytes`."""


class _Collector:
    """What one load has found so far (resources, issues, bundle instances) and
    how it reports an issue; `_Documents` adds the documents, `_Expansion` the
    bundles."""

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

    def _documents(self, text: str) -> Iterator[tuple[Node, Any]]:
        from reconciler import yamlload  # only a tree not found in the cache is parsed

        limits = self.limits
        return yamlload.documents(
            text,
            max_nodes=limits.max_nodes,
            max_bytes=limits.max_expanded_bytes,
            max_depth=limits.max_depth,
        )

    def _parsed(self, shown: str, text: str, via: str = "") -> Iterator[tuple[Node, Any]]:
        """Each document of one manifest as (node, data). A YAML error ends the file
        and is reported where it starts; so is a file that declares nothing without
        the empty mark, or declares something with it (0094)."""
        from reconciler import yamlload  # only a tree not found in the cache is parsed

        declared = False
        try:
            for node, data in self._documents(text):
                declared = declared or data is not None
                yield node, data
        except yamlload.MarkedYAMLError as exc:
            line, problem = yamlload.where(exc)
            self.add_issue(Issue(shown, line, "", f"invalid YAML: {problem}", via))
            return
        except yamlload.YAMLError as exc:
            self.add_issue(Issue(shown, None, "", f"invalid YAML: {exc}", via))
            return
        except RecursionError:  # past every depth check: still an error, never a crash
            self.add_issue(Issue(shown, None, "", "invalid YAML: nested too deeply", via))
            return
        # an empty file is what a truncated write leaves, and loading it as zero
        # resources would prune everything the file declared
        marked = text.partition("\n")[0].strip("\ufeff \t\r") == EMPTY_MARK
        if not declared and not marked:
            self.add_issue(Issue(shown, None, "", _EMPTY_FILE, via))
        elif declared and marked:
            self.add_issue(Issue(shown, 1, "", _MARKED_BUT_DECLARES, via))

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
        exc: ValidationError | Sequence[ErrorDetails],
        via: str | None = None,
    ) -> None:
        """Report each error of a pydantic validation (or these errors of one) at
        its field of the document, `prefix` being where `model`'s data is."""
        errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else exc
        for error in errors:
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
        """Validate one parsed document and add what it declares (`_Documents`)."""
        raise NotImplementedError


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
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The labels of the instances being expanded, which their resources take
    over their own (the outermost instance's first: decision 0153)."""


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
