"""`reconciler diff`: what a change to the repository changes in the desired state,
with no access to the system.

Two revisions of a git repository are exported (`git archive`, extracted as the git
source extracts: no member or symlink leaves the export), each loaded and
validated as `validate` loads a tree, and compared resource by resource: added,
removed, changed, and for a changed one the spec, policy and label fields that
differ, as JSON pointers with old and new values. Nothing is observed, no store
is opened, no provider is called beyond `prepare` and `describe`.

A secret is never shown: a spec holding a `Sensitive` value dumps it as a keyed
digest (model.SensitiveStr), and any differing value that holds such a digest
becomes a masked `Change` (`(sensitive value changed)`), so the digests are not
shown either. Rendering reuses diff.py's helpers; every value from the
repository goes through `logs.printable` (text) or diff.py's escapes (Markdown).
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import git

from reconciler.diff import (
    Style,
    change_json,
    change_lines,
    inline,
    markdown_change,
    markdown_details,
)
from reconciler.logs import printable
from reconciler.manifests import ManifestError, load
from reconciler.model import Change, DesiredState, Instance, Resource
from reconciler.sources.git import extract_tar, normalize_path

if TYPE_CHECKING:
    from reconciler.bundles import RemoteFetcher

DIFF_SCHEMA_VERSION = 1
"""The `schemaVersion` of `diff --format json` (see docs/cli.md#diff)."""

_MARKER = re.compile(r"sensitive:[a-z0-9-]+:[0-9a-f]+")
"""How a Sensitive value dumps (Sensitive.marker): `sensitive:hmac-sha256:<hex>`."""

Kind = Literal["added", "removed", "changed"]
_SYMBOL: Mapping[Kind, tuple[str, str]] = {
    "added": ("+", "32"),
    "changed": ("~", "33"),
    "removed": ("-", "31"),
}


class RevisionError(Exception):
    """A revision that cannot be compared: unknown to git, unexportable, or
    invalid (`issues` then holds the loader's errors, one line each)."""

    def __init__(self, message: str, issues: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.issues = tuple(issues)


@dataclass(frozen=True, slots=True)
class Side:
    """One revision as compared: what was asked (`rev`), the commit it names,
    and its desired state (empty when `path` does not exist there)."""

    rev: str
    commit: str
    state: DesiredState
    present: bool


@dataclass(frozen=True, slots=True)
class ResourceDiff:
    id: str
    kind: Kind
    describe: str
    changes: tuple[Change, ...]
    """For an added resource its spec's fields (before None); for a changed one
    what differs: spec fields as `/pointer`, policy fields as `policy/pointer`,
    labels as `labels/name`; nothing for a removed one."""
    instance: str = ""
    """The bundle instance that makes it (in the new revision, or the old one
    for a removed resource)."""


@dataclass(frozen=True, slots=True)
class InstanceDiff:
    """A bundle instance added, removed or changed: for a changed one, its values
    as `values/name` and its source, ref and commit, each with old and new."""

    id: str
    kind: Kind
    source: str
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class RevisionDiff:
    old: Side
    new: Side
    path: str
    resources: tuple[ResourceDiff, ...]
    unchanged: int
    instances: tuple[InstanceDiff, ...] = ()

    @property
    def same(self) -> bool:
        return not self.resources and not self.instances

    def count(self, kind: Kind) -> int:
        return sum(1 for r in self.resources if r.kind == kind)


# ---------------------------------------------------------------- revisions


def open_repo(where: Path) -> git.Repo:
    """The git repository at or above `where`; RevisionError if there is none."""
    try:
        return git.Repo(where, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise RevisionError(f"{where} is not inside a git repository (see --repo)") from None


def resolve(repo: git.Repo, rev: str) -> str:
    """The commit `rev` names (anything `git rev-parse` understands)."""
    if not rev or rev.startswith("-") or "\0" in rev:
        raise RevisionError(f"revision {rev!r} is not a valid revision name")
    try:
        out: str = repo.git.rev_parse(
            "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"
        )
    except git.GitCommandError:
        raise RevisionError(f"revision {rev!r} is not a commit of {repo.working_dir}") from None
    return out.strip()


@contextmanager
def exported(repo: git.Repo, commit: str, path: str) -> Iterator[Path | None]:
    """`path` of `commit` exported into a temporary directory, removed afterwards;
    None if `path` does not exist at that commit."""
    top = Path(tempfile.mkdtemp(prefix=f"reconciler-diff-{commit[:12]}-"))
    try:
        with tempfile.TemporaryFile(dir=top) as archive:
            try:
                repo.git.execute(
                    ["git", "archive", "--format=tar", commit, "--", *([path] if path else [])],
                    output_stream=archive,
                )
            except git.GitCommandError:
                # `git archive` refuses a pathspec matching nothing: the path is absent
                if path and not _exists(repo, commit, path):
                    yield None
                    return
                raise RevisionError(f"commit {commit} could not be exported") from None
            archive.seek(0)
            tree = top / "tree"
            tree.mkdir()
            try:
                with tarfile.open(fileobj=archive, mode="r:") as tar:
                    extract_tar(tar, tree)
            except (OSError, tarfile.TarError) as error:
                raise RevisionError(f"commit {commit} could not be exported: {error}") from None
        target = tree / path if path else tree
        if not target.is_dir() or target.is_symlink():
            raise RevisionError(f"path {path!r} at commit {commit} is not a directory")
        yield target
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _exists(repo: git.Repo, commit: str, path: str) -> bool:
    out: str = repo.git.ls_tree(commit, "--", path)
    return bool(out.strip())


def load_revision(
    repo: git.Repo,
    rev: str,
    path: str,
    registry: Mapping[str, Any],
    remote: RemoteFetcher | None = None,
) -> Side:
    """Resolve, export and load one revision; RevisionError naming it on failure."""
    commit = resolve(repo, rev)
    with exported(repo, commit, path) as tree:
        if tree is None:
            empty = DesiredState(revision=commit[:12], resources={}, dependencies={})
            return Side(rev, commit, empty, present=False)
        try:
            state = load(tree, registry, revision=commit[:12], remote=remote)
        except ManifestError as exc:
            noun = "error" if len(exc.issues) == 1 else "errors"
            raise RevisionError(
                f"revision {rev} ({commit[:12]}) is invalid: {len(exc.issues)} {noun}",
                [str(issue) for issue in exc.issues],
            ) from None
    return Side(rev, commit, state, present=True)


def compare_revisions(
    repo: git.Repo,
    old: str,
    new: str,
    path: str,
    registry: Mapping[str, Any],
    remote: RemoteFetcher | None = None,
) -> RevisionDiff:
    try:
        path = normalize_path(path)
    except ValueError as error:
        raise RevisionError(str(error)) from None
    before = load_revision(repo, old, path, registry, remote)
    after = load_revision(repo, new, path, registry, remote)
    if not before.present and not after.present:
        raise RevisionError(f"path {path!r} exists at neither revision ({old}, {new})")
    return compare(before, after, path, registry)


# ---------------------------------------------------------------- comparison


def compare(old: Side, new: Side, path: str, registry: Mapping[str, Any]) -> RevisionDiff:
    """Resource by resource, in the order of the new revision then the removed."""
    before, after = old.state.resources, new.state.resources
    found: list[ResourceDiff] = []
    unchanged = 0
    for rid, res in after.items():
        was = before.get(rid)
        describe = _describe(registry, res)
        if was is None:
            fields = tuple(Change(f, None, a) for f, _, a in _leaves(_ABSENT, _spec(res)))
            masked = tuple(_masked(c, absent=True) for c in fields)
            found.append(ResourceDiff(rid, "added", describe, masked, res.instance))
            continue
        changes = _resource_changes(was, res)
        if changes:
            found.append(ResourceDiff(rid, "changed", describe, changes, res.instance))
        else:
            unchanged += 1
    for rid, res in before.items():
        if rid not in after:
            describe = _describe(registry, res)
            found.append(ResourceDiff(rid, "removed", describe, (), res.instance))
    instances = _instance_diffs(old.state.instances, new.state.instances)
    return RevisionDiff(old, new, path, tuple(found), unchanged, instances)


def _instance_fields(inst: Instance) -> dict[str, Any]:
    return {
        "values": dict(inst.values),
        "source": inst.source,
        "ref": inst.ref or None,
        "commit": inst.commit or None,
    }


def _instance_diffs(
    before: Mapping[str, Instance], after: Mapping[str, Instance]
) -> tuple[InstanceDiff, ...]:
    """What changed in the bundle instances: the values underneath the resources
    (a secret parameter's value is a reference, never a secret)."""
    found: list[InstanceDiff] = []
    for iid, inst in after.items():
        was = before.get(iid)
        new = _instance_fields(inst)
        if was is None:
            changes = tuple(Change(f, None, a) for f, _, a in _leaves(_ABSENT, new))
            found.append(InstanceDiff(iid, "added", inst.source, changes))
            continue
        changes = tuple(Change(f, b, a) for f, b, a in _leaves(_instance_fields(was), new))
        if changes:
            found.append(InstanceDiff(iid, "changed", inst.source, changes))
    for iid, inst in before.items():
        if iid not in after:
            found.append(InstanceDiff(iid, "removed", inst.source, ()))
    return tuple(_masked_instance(i) for i in found)


def _masked_instance(item: InstanceDiff) -> InstanceDiff:
    changes = tuple(_masked(c, absent=c.before is None) for c in item.changes)
    return InstanceDiff(item.id, item.kind, item.source, changes)


def _describe(registry: Mapping[str, Any], res: Resource) -> str:
    try:
        return str(registry[res.kind].describe(res.spec))
    except Exception:  # a description is a nicety: a provider's bug must not end the diff
        return ""


def _spec(res: Resource) -> Any:
    return res.spec.model_dump(mode="json", by_alias=True)


def _resource_changes(old: Resource, new: Resource) -> tuple[Change, ...]:
    changes: list[Change] = []
    if old.spec_hash != new.spec_hash:
        changes += [Change(f, b, a) for f, b, a in _leaves(_spec(old), _spec(new))]
    old_policy = old.policy.model_dump(mode="json", by_alias=True)
    new_policy = new.policy.model_dump(mode="json", by_alias=True)
    changes += [Change(f"policy{f}", b, a) for f, b, a in _leaves(old_policy, new_policy)]
    labels = _leaves(dict(old.labels), dict(new.labels))
    changes += [Change(f"labels{f}", b, a) for f, b, a in labels]
    return tuple(_masked(c) for c in changes)


def _masked(change: Change, *, absent: bool = False) -> Change:
    if _holds_marker(change.before) or _holds_marker(change.after):
        return Change.masked(change.field, absent=absent or change.before is None)
    return change


def _holds_marker(value: Any) -> bool:
    if isinstance(value, str):
        return _MARKER.search(value) is not None
    if isinstance(value, Mapping):
        return any(_holds_marker(k) or _holds_marker(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_marker(v) for v in value)
    return False


_ABSENT: Any = object()


def _leaves(old: Any, new: Any, at: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(JSON pointer, old, new) for every differing value; `old` _ABSENT gives
    every leaf of `new` (old None). Mappings are compared key by key, lists of the
    same length item by item; anything else as a whole."""
    if old is _ABSENT and isinstance(new, Mapping) and new:
        for key, value in new.items():
            yield from _leaves(_ABSENT, value, f"{at}/{_escape(key)}")
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in [*old, *(k for k in new if k not in old)]:
            yield from _leaves(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{at}/{_escape(key)}")
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _leaves(a, b, f"{at}/{index}")
        return
    if old is _ABSENT and new is _ABSENT:
        return
    if old is _ABSENT:
        if new is not None:
            yield at, None, new
    elif new is _ABSENT:
        if old is not None:
            yield at, old, None
    elif old != new or type(old) is not type(new):
        yield at, old, new


def _escape(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


# ---------------------------------------------------------------- rendering


def summary_line(diff: RevisionDiff) -> str:
    line = (
        f"Diff: {diff.count('added')} to add, {diff.count('changed')} to change, "
        f"{diff.count('removed')} to remove, {diff.unchanged} unchanged."
    )
    if diff.instances:
        counts: Counter[str] = Counter(i.kind for i in diff.instances)
        parts = ", ".join(f"{counts[k]} {k}" for k in ("added", "changed", "removed") if counts[k])
        line += f" Bundle instances: {parts}."
    return line


def _side(side: Side) -> str:
    shown = side.rev if side.commit.startswith(side.rev) else f"{side.rev} ({side.commit[:12]})"
    return shown if side.present else f"{shown}, path absent"


def title(diff: RevisionDiff) -> str:
    where = f" {diff.path}" if diff.path else ""
    return f"reconciler diff{where}  {_side(diff.old)} -> {_side(diff.new)}"


def render_text(diff: RevisionDiff, *, colour: bool) -> str:
    style = Style(colour)
    width = max((len(printable(r.id)) for r in diff.resources), default=0)
    out = [printable(title(diff)), ""]
    if diff.instances:
        out.append("  Bundle instances:")
        for inst in diff.instances:
            symbol, code = _SYMBOL[inst.kind]
            out.append(f"  {style(code, symbol)} {printable(inst.id)}  {printable(inst.source)}")
            for change in inst.changes:
                out.extend(f"      {text}" for text in change_lines(change, style))
        out += ["", "  Resources:"] if diff.resources else [""]
    for item in diff.resources:
        symbol, code = _SYMBOL[item.kind]
        line = f"  {style(code, symbol)} {printable(item.id):<{width}}  {printable(item.describe)}"
        if item.instance:
            line = f"{line.rstrip()}   (from {printable(item.instance)})"
        out.append(line.rstrip())
        for change in item.changes:
            out.extend(f"      {text}" for text in change_lines(change, style))
    if diff.same:
        out.append("  No changes. Both revisions declare the same desired state.")
    out += ["", summary_line(diff)]
    return "\n".join(out) + "\n"


def diff_json(diff: RevisionDiff) -> dict[str, Any]:
    return {
        "schemaVersion": DIFF_SCHEMA_VERSION,
        "path": diff.path,
        "from": {"rev": diff.old.rev, "commit": diff.old.commit, "present": diff.old.present},
        "to": {"rev": diff.new.rev, "commit": diff.new.commit, "present": diff.new.present},
        "instances": [
            {
                "id": i.id,
                "action": i.kind,
                "source": i.source,
                "changes": [change_json(c) for c in i.changes],
            }
            for i in diff.instances
        ],
        "resources": [
            {
                "id": r.id,
                "action": r.kind,
                "describe": r.describe,
                "instance": r.instance or None,
                "changes": [_section_json(c) for c in r.changes],
            }
            for r in diff.resources
        ],
        "summary": {
            "added": diff.count("added"),
            "changed": diff.count("changed"),
            "removed": diff.count("removed"),
            "unchanged": diff.unchanged,
        },
    }


def _section_json(change: Change) -> dict[str, Any]:
    """A change as diff.py's JSON with `in`: spec, policy or labels, and `field` a
    JSON pointer into that part."""
    section, _, rest = change.field.partition("/")
    if section not in ("policy", "labels"):
        return {"in": "spec", **change_json(change)}
    return {"in": section, **change_json(change), "field": f"/{rest}"}


def render_json(diff: RevisionDiff) -> str:
    return json.dumps(diff_json(diff), indent=2) + "\n"


_MD_HEADING: Mapping[Kind, str] = {"added": "add", "changed": "change", "removed": "remove"}


def render_markdown(diff: RevisionDiff) -> str:
    """As diff.render_plan_markdown: a heading, the counts, one collapsible
    `<details>` per resource with its fields in a fenced block; past
    MARKDOWN_LIMIT characters the rest are counted, not shown."""
    out = [
        f"### {inline(title(diff))}",
        "",
        f"**{inline(summary_line(diff))}**",
        "",
    ]
    if diff.same:
        out.append("No changes. Both revisions declare the same desired state.")
    items = []
    for inst in diff.instances:
        symbol, _ = _SYMBOL[inst.kind]
        summary = f"<code>{symbol} {inline(inst.id)}</code> {_MD_HEADING[inst.kind]}"
        summary += f": bundle {inline(inst.source)}"
        items.append((summary, [line for c in inst.changes for line in markdown_change(c)]))
    for item in diff.resources:
        symbol, _ = _SYMBOL[item.kind]
        summary = f"<code>{symbol} {inline(item.id)}</code> {_MD_HEADING[item.kind]}"
        if item.describe:
            summary += f": {inline(item.describe)}"
        if item.instance:
            summary += f" (from {inline(item.instance)})"
        body = [line for change in item.changes for line in markdown_change(change)]
        items.append((summary, body))
    return markdown_details(out, items, "resources not shown")
