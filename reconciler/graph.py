"""The dependency graph: explicit `policy.dependsOn` plus implicit edges (a path
under a managed directory), cycle detection and rendering as Mermaid, DOT or JSON,
with the resources of each bundle instance grouped (nested as the instances are)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.model import DesiredState

Edges = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Group:
    """A bundle instance as the renderers draw it: a box around its resources."""

    id: str
    source: str
    """The bundle it instantiates (a directory of the tree, or `repo//path@commit`)."""
    parent: str = ""
    """The instance it is nested in ("" at the top)."""


@dataclass(frozen=True, slots=True)
class Groups:
    """Which resource each bundle instance made; empty for a flat tree."""

    groups: Mapping[str, Group] = field(default_factory=dict)
    member: Mapping[str, str] = field(default_factory=dict)
    """Resource id -> the id of the instance that made it (flat ones absent)."""

    def children(self) -> dict[str, list[str]]:
        """For "" (the top) and every instance: the instances nested directly in it,
        only those with a resource somewhere inside, sorted."""
        used: set[str] = set()
        for gid in set(self.member.values()):
            while gid and gid not in used and gid in self.groups:
                used.add(gid)
                gid = self.groups[gid].parent
        children: dict[str, list[str]] = {"": []}
        for gid in sorted(used):
            parent = self.groups[gid].parent
            children.setdefault(parent if parent in used else "", []).append(gid)
            children.setdefault(gid, [])
        return children

    def of(self, rid: str) -> str:
        gid = self.member.get(rid, "")
        return gid if gid in self.groups else ""


NO_GROUPS = Groups()


def instance_groups(desired: DesiredState) -> Groups:
    """The bundle instances of a desired state as groups, each with its bundle's
    source (and pinned commit)."""
    groups = {}
    for inst in desired.instances.values():
        pinned = f"@{inst.commit[:12]}" if inst.commit else ""
        groups[inst.id] = Group(inst.id, f"{inst.source}{pinned}", inst.parent)
    member = {rid: res.instance for rid, res in desired.resources.items() if res.instance}
    return Groups(groups, member)


def implicit_edges(paths: Mapping[str, str]) -> dict[str, str]:
    """For every id with a path, the id owning the nearest managed ancestor path."""
    owner_of = {path.rstrip("/"): rid for rid, path in paths.items()}
    parents: dict[str, str] = {}
    for rid, path in paths.items():
        parent = path.rstrip("/").rpartition("/")[0]
        while parent:
            owner = owner_of.get(parent)
            if owner is not None:
                parents[rid] = owner
                break
            parent = parent.rpartition("/")[0]
    return parents


def find_cycle(edges: Edges) -> list[str] | None:
    """One dependency cycle as [a, b, ..., a], or None. Iterative DFS."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges, white)
    for start in edges:
        if color[start] != white:
            continue
        stack: list[tuple[str, Iterable[str]]] = [(start, iter(edges[start]))]
        path = [start]
        color[start] = grey
        while stack:
            node, children = stack[-1]
            for child in children:
                state = color.get(child, black)
                if state == grey:
                    return [*path[path.index(child) :], child]
                if state == white:
                    color[child] = grey
                    path.append(child)
                    stack.append((child, iter(edges[child])))
                    break
            else:
                color[node] = black
                path.pop()
                stack.pop()
    return None


def dependents(edges: Edges) -> dict[str, list[str]]:
    """The reverse graph: for every id, the ids that depend on it."""
    reverse: dict[str, list[str]] = {rid: [] for rid in edges}
    for rid, deps in edges.items():
        for dep in deps:
            reverse.setdefault(dep, []).append(rid)
    return reverse


def _sorted_edges(edges: Edges) -> list[tuple[str, str]]:
    return sorted((dep, rid) for rid, deps in edges.items() for dep in deps)


def _nested(
    edges: Edges,
    groups: Groups,
    node: Callable[[str, str], str],
    open_group: Callable[[Group, str], str],
    close: str,
) -> Iterator[str]:
    """Node lines, the flat resources first, then each instance's box with its
    resources and the boxes nested in it, depth first; `node` and `open_group`
    get the indentation."""
    by_group: dict[str, list[str]] = {}
    for rid in sorted(edges):
        by_group.setdefault(groups.of(rid), []).append(rid)
    children = groups.children()

    def walk(gid: str, indent: str) -> Iterator[str]:
        for rid in by_group.get(gid, ()):
            yield node(rid, indent)
        for child in children.get(gid, ()):
            yield open_group(groups.groups[child], indent)
            yield from walk(child, indent + "    ")
            yield indent + close

    yield from walk("", "    ")


def to_mermaid(edges: Edges, label: Callable[[str], str] = str, groups: Groups = NO_GROUPS) -> str:
    def text(value: str) -> str:
        return value.replace('"', "#quot;")

    ids = {rid: f"n{i}" for i, rid in enumerate(sorted(edges))}
    boxes = {gid: f"g{i}" for i, gid in enumerate(sorted(groups.groups))}
    lines = ["graph LR"]
    lines += _nested(
        edges,
        groups,
        lambda rid, indent: f'{indent}{ids[rid]}["{text(label(rid))}"]',
        lambda group, indent: (
            f'{indent}subgraph {boxes[group.id]}["{text(group.id)}<br>{text(group.source)}"]'
        ),
        "end",
    )
    lines += [f"    {ids[dep]} --> {ids[rid]}" for dep, rid in _sorted_edges(edges)]
    return "\n".join(lines) + "\n"


def to_dot(edges: Edges, label: Callable[[str], str] = str, groups: Groups = NO_GROUPS) -> str:
    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def box(group: Group, indent: str) -> str:
        # Graphviz draws a subgraph as a box only when its name starts with "cluster"
        label = quote(f"{group.id}\n{group.source}").replace("\n", "\\n")
        return f"{indent}subgraph {quote('cluster_' + group.id)} {{ label={label};"

    lines = ["digraph reconciler {", "    rankdir=LR;"]
    lines += _nested(
        edges,
        groups,
        lambda rid, indent: f"{indent}{quote(rid)} [label={quote(label(rid))}];",
        box,
        "}",
    )
    lines += [f"    {quote(dep)} -> {quote(rid)};" for dep, rid in _sorted_edges(edges)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_json(edges: Edges, label: Callable[[str], str] = str, groups: Groups = NO_GROUPS) -> str:
    """The graph as data: each resource with its instance and dependencies, and
    each instance with its parent and the resources it made itself."""
    made: dict[str, list[str]] = {}
    for rid in sorted(edges):
        made.setdefault(groups.of(rid), []).append(rid)
    document = {
        "resources": [
            {"id": rid, "instance": groups.of(rid) or None, "dependsOn": sorted(edges[rid])}
            for rid in sorted(edges)
        ],
        "instances": [
            {
                "id": gid,
                "source": groups.groups[gid].source,
                "parent": groups.groups[gid].parent or None,
                "resources": made.get(gid, []),
            }
            for gid in sorted(groups.groups)
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def topological_order(edges: Edges) -> list[str]:
    """Ids with every dependency before its dependents (Kahn); input must be acyclic.
    Ties keep the input order, so the result is stable."""
    remaining = {rid: sum(1 for d in deps if d in edges) for rid, deps in edges.items()}
    reverse = dependents(edges)
    order = [rid for rid, count in remaining.items() if count == 0]
    for rid in order:  # the list grows while we walk it
        for child in reverse.get(rid, ()):
            remaining[child] -= 1
            if remaining[child] == 0:
                order.append(child)
    if len(order) != len(edges):
        raise ValueError("dependency cycle")
    return order
