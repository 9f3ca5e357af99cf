"""The dependency graph: implicit edges from paths, cycles, the reverse graph and
the two renderings, as data."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest

from reconciler import graph

# --- implicit_edges -------------------------------------------------------------

IMPLICIT_CASES: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("empty", {}, {}),
    (
        "file under directory",
        {"Directory/d": "/srv/app", "File/f": "/srv/app/config.ini"},
        {"File/f": "Directory/d"},
    ),
    (
        "nearest managed ancestor wins",
        {
            "Directory/a": "/srv",
            "Directory/b": "/srv/app",
            "File/f": "/srv/app/etc/config.ini",
        },
        {"Directory/b": "Directory/a", "File/f": "Directory/b"},
    ),
    (
        "unmanaged gap in the chain",
        {"Directory/a": "/srv", "File/f": "/srv/x/y/z/file"},
        {"File/f": "Directory/a"},
    ),
    (
        "sibling with a common prefix is not a parent",
        {"Directory/app": "/srv/app", "File/f": "/srv/application/file"},
        {},
    ),
    (
        "trailing slash on the directory",
        {"Directory/d": "/srv/app/", "Symlink/l": "/srv/app/current"},
        {"Symlink/l": "Directory/d"},
    ),
    ("no ancestors at all", {"File/a": "/a", "File/b": "/b/c"}, {}),
]


@pytest.mark.parametrize(
    ("paths", "expected"),
    [c[1:] for c in IMPLICIT_CASES],
    ids=[c[0] for c in IMPLICIT_CASES],
)
def test_implicit_edges(paths: dict[str, str], expected: dict[str, str]) -> None:
    assert graph.implicit_edges(paths) == expected


# --- find_cycle -----------------------------------------------------------------

NO_CYCLE: list[tuple[str, dict[str, tuple[str, ...]]]] = [
    ("empty", {}),
    ("single", {"a": ()}),
    ("chain", {"a": ("b",), "b": ("c",), "c": ()}),
    ("diamond", {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": ()}),
    ("dependency outside the graph", {"a": ("x",)}),
    ("two components", {"a": ("b",), "b": (), "c": ("d",), "d": ()}),
    (
        "wide fan-in visited twice",
        {"top": tuple(f"n{i}" for i in range(50)), **{f"n{i}": ("base",) for i in range(50)}}
        | {"base": ()},
    ),
]


@pytest.mark.parametrize("edges", [c[1] for c in NO_CYCLE], ids=[c[0] for c in NO_CYCLE])
def test_find_cycle_none(edges: dict[str, tuple[str, ...]]) -> None:
    assert graph.find_cycle(edges) is None


def _is_cycle(cycle: list[str], edges: Mapping[str, tuple[str, ...]]) -> bool:
    return (
        len(cycle) >= 2
        and cycle[0] == cycle[-1]
        and len(set(cycle[:-1])) == len(cycle) - 1
        and all(b in edges[a] for a, b in itertools.pairwise(cycle))
    )


CYCLES: list[tuple[str, dict[str, tuple[str, ...]], list[str]]] = [
    ("self-loop", {"a": ("a",)}, ["a", "a"]),
    ("two nodes", {"a": ("b",), "b": ("a",)}, ["a", "b", "a"]),
    (
        "long cycle",
        {"a": ("b",), "b": ("c",), "c": ("d",), "d": ("e",), "e": ("a",)},
        ["a", "b", "c", "d", "e", "a"],
    ),
    (
        "cycle behind an acyclic entry",
        {"entry": ("x",), "x": ("y",), "y": ("z",), "z": ("x",)},
        ["x", "y", "z", "x"],
    ),
    (
        "cycle after a diamond",
        {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": ("e",), "e": ("c",)},
        ["d", "e", "c", "d"],
    ),
]


@pytest.mark.parametrize(("edges", "expected"), [c[1:] for c in CYCLES], ids=[c[0] for c in CYCLES])
def test_find_cycle(edges: dict[str, tuple[str, ...]], expected: list[str]) -> None:
    cycle = graph.find_cycle(edges)
    assert cycle is not None
    assert _is_cycle(cycle, edges), cycle
    assert cycle == expected


def test_find_cycle_deep_chain_does_not_recurse() -> None:
    n = 20_000
    edges = {f"n{i}": (f"n{i + 1}",) for i in range(n)} | {f"n{n}": ()}
    assert graph.find_cycle(edges) is None
    edges[f"n{n}"] = ("n0",)
    cycle = graph.find_cycle(edges)
    assert cycle is not None and len(cycle) == n + 2
    assert _is_cycle(cycle, edges)


# --- dependents -----------------------------------------------------------------


def test_dependents_is_the_reverse_graph() -> None:
    edges = {"a": (), "b": ("a",), "c": ("a", "b"), "d": ("c",)}
    assert graph.dependents(edges) == {"a": ["b", "c"], "b": ["c"], "c": ["d"], "d": []}


def test_dependents_includes_dependencies_outside_the_graph() -> None:
    assert graph.dependents({"a": ("x",)}) == {"a": [], "x": ["a"]}


def test_dependents_of_empty_graph() -> None:
    assert graph.dependents({}) == {}


# --- rendering ------------------------------------------------------------------

EDGES = {"File/f": ("Directory/d",), "Directory/d": (), "Symlink/l": ("Directory/d", "File/f")}


def test_to_mermaid() -> None:
    assert graph.to_mermaid(EDGES) == (
        "graph LR\n"
        '    n0["Directory/d"]\n'
        '    n1["File/f"]\n'
        '    n2["Symlink/l"]\n'
        "    n0 --> n1\n"
        "    n0 --> n2\n"
        "    n1 --> n2\n"
    )


def test_to_mermaid_with_labels() -> None:
    text = graph.to_mermaid({"b": ("a",), "a": ()}, label=lambda rid: rid.upper() + "!")
    assert text == 'graph LR\n    n0["A!"]\n    n1["B!"]\n    n0 --> n1\n'


def test_to_dot() -> None:
    assert graph.to_dot(EDGES) == (
        "digraph reconciler {\n"
        "    rankdir=LR;\n"
        '    "Directory/d" [label="Directory/d"];\n'
        '    "File/f" [label="File/f"];\n'
        '    "Symlink/l" [label="Symlink/l"];\n'
        '    "Directory/d" -> "File/f";\n'
        '    "Directory/d" -> "Symlink/l";\n'
        '    "File/f" -> "Symlink/l";\n'
        "}\n"
    )


def test_to_dot_quotes_labels() -> None:
    text = graph.to_dot({"a": ()}, label=lambda rid: 'say "hi" \\ bye')
    assert '    "a" [label="say \\"hi\\" \\\\ bye"];\n' in text


def test_renderings_of_empty_graph() -> None:
    assert graph.to_mermaid({}) == "graph LR\n"
    assert graph.to_dot({}) == "digraph reconciler {\n    rankdir=LR;\n}\n"


# --- topological_order ----------------------------------------------------------

ORDER_CASES: list[tuple[str, dict[str, tuple[str, ...]], list[str]]] = [
    ("empty", {}, []),
    ("independent keep input order", {"c": (), "a": (), "b": ()}, ["c", "a", "b"]),
    ("chain listed backwards", {"c": ("b",), "b": ("a",), "a": ()}, ["a", "b", "c"]),
    (
        "diamond",
        {"top": ("left", "right"), "left": ("base",), "right": ("base",), "base": ()},
        ["base", "left", "right", "top"],
    ),
    ("dependency outside the graph is ignored", {"a": ("x",), "b": ("a",)}, ["a", "b"]),
]


@pytest.mark.parametrize(
    ("edges", "expected"), [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES]
)
def test_topological_order(edges: dict[str, tuple[str, ...]], expected: list[str]) -> None:
    order = graph.topological_order(edges)
    assert order == expected
    position = {rid: i for i, rid in enumerate(order)}
    for rid, deps in edges.items():
        assert all(position[d] < position[rid] for d in deps if d in edges)


def test_topological_order_refuses_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        graph.topological_order({"a": ("b",), "b": ("a",), "c": ()})


# --- grouped by bundle instance -------------------------------------------------

GROUPED_EDGES = {"Directory/d": (), "File/a": ("Directory/d",), "File/b": ("File/a",)}
GROUPS = graph.Groups(
    {
        "Bundle/web": graph.Group("Bundle/web", "bundles/web"),
        "Bundle/web-db": graph.Group("Bundle/web-db", "git.example/db.git//pg@0123", "Bundle/web"),
        "Bundle/idle": graph.Group("Bundle/idle", "bundles/none"),  # made nothing: not drawn
    },
    {"File/a": "Bundle/web", "File/b": "Bundle/web-db"},
)


def test_to_dot_draws_an_instance_as_a_cluster_nested_as_the_instances() -> None:
    assert graph.to_dot(GROUPED_EDGES, groups=GROUPS) == (
        "digraph reconciler {\n"
        "    rankdir=LR;\n"
        '    "Directory/d" [label="Directory/d"];\n'
        '    subgraph "cluster_Bundle/web" { label="Bundle/web\\nbundles/web";\n'
        '        "File/a" [label="File/a"];\n'
        '        subgraph "cluster_Bundle/web-db" '
        '{ label="Bundle/web-db\\ngit.example/db.git//pg@0123";\n'
        '            "File/b" [label="File/b"];\n'
        "        }\n"
        "    }\n"
        '    "Directory/d" -> "File/a";\n'
        '    "File/a" -> "File/b";\n'
        "}\n"
    )


def test_to_mermaid_draws_an_instance_as_a_subgraph() -> None:
    assert graph.to_mermaid(GROUPED_EDGES, groups=GROUPS) == (
        "graph LR\n"
        '    n0["Directory/d"]\n'
        '    subgraph g1["Bundle/web<br>bundles/web"]\n'
        '        n1["File/a"]\n'
        '        subgraph g2["Bundle/web-db<br>git.example/db.git//pg@0123"]\n'
        '            n2["File/b"]\n'
        "        end\n"
        "    end\n"
        "    n0 --> n1\n"
        "    n1 --> n2\n"
    )


def test_to_json_names_each_resource_instance_and_each_instance_resources() -> None:
    import json

    document = json.loads(graph.to_json(GROUPED_EDGES, groups=GROUPS))
    assert document["resources"] == [
        {"id": "Directory/d", "instance": None, "dependsOn": []},
        {"id": "File/a", "instance": "Bundle/web", "dependsOn": ["Directory/d"]},
        {"id": "File/b", "instance": "Bundle/web-db", "dependsOn": ["File/a"]},
    ]
    assert [(i["id"], i["parent"], i["resources"]) for i in document["instances"]] == [
        ("Bundle/idle", None, []),
        ("Bundle/web", None, ["File/a"]),
        ("Bundle/web-db", "Bundle/web", ["File/b"]),
    ]


def test_a_flat_graph_renders_as_before() -> None:
    edges = {"File/a": (), "File/b": ("File/a",)}
    assert graph.to_dot(edges, groups=graph.NO_GROUPS) == graph.to_dot(edges)
    assert "subgraph" not in graph.to_dot(edges) + graph.to_mermaid(edges)


def test_instance_groups_of_a_desired_state() -> None:
    from reconciler.model import DesiredState, Instance, Location

    web = Instance("Bundle/web", "bundles/web", Location("a.yaml", 1), {})
    remote = Instance(
        "Bundle/db", "https://git.example/db.git//pg", Location("a.yaml", 9), {}, "", "v1", "f" * 40
    )
    desired = DesiredState("rev", {}, {}, {web.id: web, remote.id: remote})
    groups = graph.instance_groups(desired)
    assert groups.groups == {
        "Bundle/web": graph.Group("Bundle/web", "bundles/web"),
        "Bundle/db": graph.Group("Bundle/db", "https://git.example/db.git//pg@" + "f" * 12),
    }
