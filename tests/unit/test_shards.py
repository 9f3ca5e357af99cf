"""Sharding (reconciler.shards): label selectors (every operator, bad selectors
at their file:line and field), the partition of a revision for one shard (what it
claims, what no shard or two shards claim), dependencies across shards, and the
labels a bundle instance gives what it makes. Real config trees in tmp
directories, the real registry and loader."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import shards
from reconciler.cache import Cache
from reconciler.manifests import ManifestError, load
from reconciler.model import DesiredState, ProviderSettings, Requirement
from reconciler.registry import Registry


@dataclass
class Tree:
    config: Path
    root: Path
    registry: Registry
    cache: Cache | None = None

    def write(self, name: str, text: str) -> None:
        path = self.config / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n").replace("$ROOT", str(self.root)))

    def load(self, shard: str | None = None) -> DesiredState:
        return load(self.config, self.registry, shard=shard, cache=self.cache)

    def issues(self, shard: str | None = None) -> list[str]:
        with pytest.raises(ManifestError) as info:
            self.load(shard)
        return [str(issue) for issue in info.value.issues]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "config"
    config.mkdir()
    return Tree(config, root, Registry.discover(ProviderSettings(roots=(str(root),))))


def directory(name: str, labels: str = "", depends: str = "") -> str:
    meta = f"{{name: {name}, labels: {{{labels}}}}}" if labels else f"{{name: {name}}}"
    policy = f"\npolicy: {{dependsOn: [{depends}]}}" if depends else ""
    return (
        f"apiVersion: reconciler/v1\nkind: Directory\nmetadata: {meta}\n"
        f"spec: {{path: $ROOT/{name}}}{policy}\n"
    )


def shard(name: str, selector: str) -> str:
    return (
        f"apiVersion: reconciler/v1\nkind: Shard\nmetadata: {{name: {name}}}\n"
        f"spec:\n  selector: {selector}\n"
    )


SHARDS = shard("a", "{matchLabels: {team: a}}") + "---\n" + shard("b", "{matchLabels: {team: b}}")


# --- selectors -------------------------------------------------------------------

LABELS = {"team": "a", "tier": "web"}

CASES = [
    # (requirements, matches LABELS)
    ([("team", "In", ("a",))], True),
    ([("team", "In", ("b", "c"))], False),
    ([("missing", "In", ("a",))], False),
    ([("team", "NotIn", ("b",))], True),
    ([("team", "NotIn", ("a", "b"))], False),
    ([("missing", "NotIn", ("a",))], True),  # as Kubernetes: an absent key is not in
    ([("tier", "Exists", ())], True),
    ([("missing", "Exists", ())], False),
    ([("missing", "DoesNotExist", ())], True),
    ([("tier", "DoesNotExist", ())], False),
    ([("team", "In", ("a",)), ("tier", "In", ("db",))], False),  # every term must hold
    ([("team", "In", ("a",)), ("tier", "NotIn", ("db",))], True),
]


@pytest.mark.parametrize(("terms", "expected"), CASES)
def test_every_operator_matches_as_kubernetes(
    terms: list[tuple[str, str, tuple[str, ...]]], expected: bool
) -> None:
    requirements = tuple(Requirement(*t) for t in terms)
    assert shards.matches(requirements, LABELS) is expected


def test_a_selector_becomes_requirements(tree: Tree) -> None:
    tree.write(
        "shards.yaml",
        shard(
            "a",
            "\n    matchLabels: {team: a, env: prod}\n    matchExpressions:\n"
            "      - {key: tier, operator: In, values: [web, db]}\n"
            "      - {key: example.com/legacy, operator: DoesNotExist}\n",
        ),
    )
    tree.write("d.yaml", directory("d", "team: a, env: prod, tier: db"))
    state = tree.load()
    assert state.resources.keys() == {"Directory/d"}  # a Shard is not a resource
    assert state.shards["a"].requirements == (
        Requirement("env", "In", ("prod",)),
        Requirement("team", "In", ("a",)),
        Requirement("tier", "In", ("web", "db")),
        Requirement("example.com/legacy", "DoesNotExist", ()),
    )
    assert str(state.shards["a"].location) == "shards.yaml:1"


BAD = [
    ("{}", "spec.selector: an empty selector would claim every resource"),
    ("{matchLabels: {team: 1}}", "spec.selector.matchLabels.team: Input should be a valid string"),
    ("{matchLabels: {'bad key': a}}", "spec.selector: matchLabels: 'bad key' is not a label key"),
    ("{matchLabel: {team: a}}", "spec.selector.matchLabel: unknown field; expected one of"),
    (
        "{matchExpressions: [{key: t, operator: Has}]}",
        "spec.selector.matchExpressions[0].operator: Input should be 'In', 'NotIn', "
        "'Exists' or 'DoesNotExist'",
    ),
    (
        "{matchExpressions: [{key: t, operator: In}]}",
        "spec.selector.matchExpressions[0]: operator In needs a non-empty list of values",
    ),
    (
        "{matchExpressions: [{key: t, operator: NotIn, values: []}]}",
        "spec.selector.matchExpressions[0]: operator NotIn needs a non-empty list of values",
    ),
    (
        "{matchExpressions: [{key: t, operator: Exists, values: [x]}]}",
        "spec.selector.matchExpressions[0]: operator Exists takes no values",
    ),
    (
        "{matchExpressions: [{key: -t, operator: Exists}]}",
        "spec.selector.matchExpressions[0].key: String should match pattern",
    ),
    ("[team]", "spec.selector: Input should be a valid dictionary or instance of Selector"),
]


@pytest.mark.parametrize(("selector", "expected"), BAD)
def test_a_bad_selector_is_an_error_at_its_line_and_field(
    tree: Tree, selector: str, expected: str
) -> None:
    tree.write("d.yaml", directory("d"))
    tree.write("shards.yaml", directory("x") + "---\n" + shard("a", selector))
    [issue] = tree.issues()
    assert issue.startswith(f"shards.yaml:10: {expected}"), issue


def test_a_shard_has_no_policy_nor_a_place_in_a_bundle(tree: Tree) -> None:
    tree.write("shards.yaml", shard("a", "{matchLabels: {t: a}}") + "policy: {prune: false}\n")
    tree.write("bundles/b/bundle.yaml", "apiVersion: reconciler/v1\nkind: BundleDefinition\n")
    tree.write("bundles/b/s.yaml", shard("inner", "{matchLabels: {t: b}}"))
    tree.write(
        "uses.yaml",
        "apiVersion: reconciler/v1\nkind: Bundle\nmetadata: {name: u}\nspec: {source: bundles/b}\n",
    )
    assert tree.issues() == [
        "shards.yaml:6: policy: a Shard has no policy",
        "bundles/b/s.yaml:2: kind: a Shard cannot be declared in a bundle: shards belong to "
        "the tree (in Bundle/u at uses.yaml:1)",
    ]


def test_two_shards_of_one_name_are_a_duplicate(tree: Tree) -> None:
    tree.write("s.yaml", SHARDS + "---\n" + shard("a", "{matchLabels: {x: y}}"))
    assert tree.issues() == [
        "s.yaml:15: metadata.name: duplicate resource id Shard/a (first defined at s.yaml:1)"
    ]


# --- the partition -------------------------------------------------------------------


def test_a_shard_enforces_what_it_alone_claims(tree: Tree) -> None:
    tree.write("shards.yaml", SHARDS)
    tree.write(
        "d.yaml",
        "---\n".join(
            [
                directory("a1", "team: a"),
                directory("a2", "team: a", depends="Directory/a1"),
                directory("b1", "team: b"),
                directory("nobody", "team: c"),
                directory("unlabelled"),
            ]
        ),
    )
    whole = tree.load()
    assert len(whole.resources) == 5 and whole.shard == "" and not whole.elsewhere
    a = tree.load("a")
    assert (a.shard, set(a.resources)) == ("a", {"Directory/a1", "Directory/a2"})
    assert a.dependencies == {"Directory/a1": (), "Directory/a2": ("Directory/a1",)}
    assert a.elsewhere == {
        "Directory/b1": ("b",),
        "Directory/nobody": (),
        "Directory/unlabelled": (),
    }
    b = tree.load("b")
    assert set(b.resources) == {"Directory/b1"}
    assert shards.report(b) == {
        "name": "b",
        "declared": ["a", "b"],
        "claimed": 1,
        "unclaimed_count": 2,
        "unclaimed": ["Directory/nobody", "Directory/unlabelled"],
        "conflicting_count": 0,
        "conflicting": [],
    }
    assert shards.counts(b) == (2, 0)
    assert shards.report(whole) is None and shards.counts(None) == (0, 0)


def test_a_resource_two_shards_claim_is_enforced_by_neither(tree: Tree) -> None:
    tree.write(
        "shards.yaml",
        SHARDS + "---\n" + shard("web", "{matchExpressions: [{key: tier, operator: Exists}]}"),
    )
    tree.write(
        "d.yaml", directory("both", "team: a, tier: web") + "---\n" + directory("mine", "team: a")
    )
    a = tree.load("a")
    assert set(a.resources) == {"Directory/mine"}
    assert a.elsewhere == {"Directory/both": ("a", "web")}
    report = shards.report(tree.load("web"))
    assert report is not None
    assert report["conflicting"] == [{"id": "Directory/both", "shards": ["a", "web"]}]
    assert (report["claimed"], report["conflicting_count"], report["unclaimed_count"]) == (0, 1, 0)


def test_the_report_caps_its_lists(tree: Tree) -> None:
    tree.write("shards.yaml", SHARDS)
    tree.write("d.yaml", "---\n".join(directory(f"d{i:03}") for i in range(120)))
    report = shards.report(tree.load("a"), cap=100)
    assert report is not None
    assert report["unclaimed_count"] == 120 and len(report["unclaimed"]) == 100  # type: ignore[arg-type]


def test_a_shard_the_revision_does_not_declare_rejects_it(tree: Tree) -> None:
    tree.write("d.yaml", directory("d", "team: a"))
    assert tree.issues("a") == [
        "--shard a: the revision declares no Shard named a (declared: none)"
    ]
    tree.write("shards.yaml", SHARDS)
    assert tree.issues("c") == [
        "--shard c: the revision declares no Shard named c (declared: a, b)"
    ]


def test_a_daemon_without_a_shard_is_refused_a_sharded_revision(tree: Tree) -> None:
    tree.write("d.yaml", directory("d", "team: a"))
    assert set(tree.load("").resources) == {"Directory/d"}  # unsharded: as before
    tree.write("shards.yaml", SHARDS)
    assert tree.issues("") == [
        "shards.yaml:1: the revision declares shards (a, b) but this daemon has no --shard: "
        "run one daemon per shard, each with --shard NAME"
    ]
    assert len(tree.load().resources) == 1  # validate sees the whole revision


def test_the_selection_survives_the_cache(tree: Tree, tmp_path: Path) -> None:
    tree.cache = Cache(tmp_path / "cache", "test")
    tree.cache.directory.mkdir()
    tree.write("shards.yaml", SHARDS)
    tree.write("d.yaml", directory("a1", "team: a") + "---\n" + directory("b1", "team: b"))
    parsed = tree.load("a")
    cached = tree.load("a")
    assert cached.shards == parsed.shards and cached.elsewhere == parsed.elsewhere
    assert set(cached.resources) == {"Directory/a1"}
    assert set(tree.load("b").resources) == {"Directory/b1"}


# --- dependencies across shards -----------------------------------------------------


def test_a_dependency_across_shards_rejects_the_revision_naming_both(tree: Tree) -> None:
    tree.write("shards.yaml", SHARDS)
    tree.write(
        "d.yaml",
        "---\n".join(
            [
                directory("a1", "team: a", depends="Directory/b1"),
                directory("b1", "team: b"),
                directory("free"),
                directory("a2", "team: a", depends="Directory/free"),
                directory("free2", depends="Directory/a1"),  # enforced by none: allowed
            ]
        ),
    )
    expected = [
        "d.yaml:5: policy.dependsOn[0]: Directory/a1 of shard a depends on Directory/b1, of "
        "shard b: a dependency across shards; give both the labels of one shard",
        "d.yaml:21: policy.dependsOn[0]: Directory/a2 of shard a depends on Directory/free, "
        "which no shard claims: a dependency across shards; give both the labels of one shard",
    ]
    assert tree.issues() == expected  # validate, and every shard's daemon alike
    assert tree.issues("a") == expected
    assert tree.issues("b") == expected


def test_an_implicit_dependency_across_shards_is_one_too(tree: Tree) -> None:
    tree.write("shards.yaml", SHARDS)
    tree.write(
        "d.yaml",
        directory("top", "team: a")
        + "---\napiVersion: reconciler/v1\nkind: File\nmetadata: {name: f, labels: {team: b}}\n"
        "spec: {path: $ROOT/top/f, content: x}\n",
    )
    [issue] = tree.issues("a")
    assert issue == (
        "d.yaml:6: File/f of shard b depends on Directory/top, of shard a: a dependency "
        "across shards; give both the labels of one shard (an implicit dependency: a path "
        "under it, or a reference)"
    )


# --- bundles -------------------------------------------------------------------------


def test_an_instance_labels_what_it_makes(tree: Tree) -> None:
    tree.write("shards.yaml", SHARDS)
    tree.write("bundles/site/bundle.yaml", "apiVersion: reconciler/v1\nkind: BundleDefinition\n")
    tree.write(
        "bundles/site/d.yaml",
        "apiVersion: reconciler/v1\nkind: Directory\n"
        "metadata: {name: dir, labels: {team: a, tier: web}}\n"
        "spec: {path: '$ROOT/${{ bundle.prefix }}d'}\n",
    )
    tree.write(
        "sites.yaml",
        "apiVersion: reconciler/v1\nkind: Bundle\nmetadata: {name: one, labels: {team: b}}\n"
        "spec: {source: bundles/site, namePrefix: one-}\n---\n"
        "apiVersion: reconciler/v1\nkind: Bundle\nmetadata: {name: two}\n"
        "spec: {source: bundles/site, namePrefix: two-}\n",
    )
    whole = tree.load()
    assert whole.resources["Directory/one-dir"].labels == {"team": "b", "tier": "web"}
    assert whole.resources["Directory/two-dir"].labels == {"team": "a", "tier": "web"}
    b = tree.load("b")
    assert set(b.resources) == {"Directory/one-dir"}
    assert set(b.instances) == {"Bundle/one"}
    assert set(tree.load("a").instances) == {"Bundle/two"}
