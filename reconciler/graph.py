"""The dependency graph: explicit `policy.dependsOn` plus implicit edges (a path
under a managed directory), cycle detection and rendering as Mermaid or DOT."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

Edges = Mapping[str, tuple[str, ...]]


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


def to_mermaid(edges: Edges, label: Callable[[str], str] = str) -> str:
    ids = {rid: f"n{i}" for i, rid in enumerate(sorted(edges))}
    lines = ["graph LR"]
    lines += [f'    {ids[rid]}["{label(rid)}"]' for rid in sorted(edges)]
    lines += [f"    {ids[dep]} --> {ids[rid]}" for dep, rid in _sorted_edges(edges)]
    return "\n".join(lines) + "\n"


def to_dot(edges: Edges, label: Callable[[str], str] = str) -> str:
    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph reconciler {", "    rankdir=LR;"]
    lines += [f"    {quote(rid)} [label={quote(label(rid))}];" for rid in sorted(edges)]
    lines += [f"    {quote(dep)} -> {quote(rid)};" for dep, rid in _sorted_edges(edges)]
    lines.append("}")
    return "\n".join(lines) + "\n"


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
