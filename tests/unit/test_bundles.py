"""Bundles loaded from real config trees: instances, values, prefixes, patches,
nesting, and every error at its file:line (docs/bundles.md)."""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.bundles import RemoteTree
from reconciler.cache import Cache
from reconciler.manifests import Issue, Limits, ManifestError, load
from reconciler.model import DesiredState, ProviderSettings
from reconciler.registry import Registry

SITE_BUNDLE = """
apiVersion: reconciler/v1
kind: BundleDefinition
description: a site
parameters:
  site: {type: string, required: true, pattern: "[a-z]+", description: short name}
  port: {type: integer, default: 8080, minimum: 1024, maximum: 65535}
  mode: {type: string, enum: ["0644", "0600"], default: "0644"}
  owners: {type: list, default: []}
  debug: {type: boolean, default: false}
"""

SITE_MANIFESTS = """
apiVersion: reconciler/v1
kind: Directory
metadata: {name: root}
spec: {path: "$ROOT/${{ values.site }}"}
---
apiVersion: reconciler/v1
kind: File
metadata: {name: conf}
spec:
  path: $ROOT/${{ values.site }}/${{ values.site }}.conf
  content: "port ${{ values.port }} debug ${{ values.debug }} $${{ literal }}\\n"
  mode: ${{ values.mode }}
policy:
  dependsOn: [Directory/root]
---
apiVersion: reconciler/v1
kind: Command
metadata: {name: reload}
spec:
  argv: [echo, "${{ bundle.name }}", "${{ bundle.prefix }}"]
  refreshOn: [File/conf]
"""


@dataclass
class Tree:
    config: Path
    root: Path
    registry: Registry

    def write(self, name: str, text: str) -> Path:
        path = self.config / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n").replace("$ROOT", str(self.root)))
        return path

    def site_bundle(self, where: str = "bundles/site") -> None:
        self.write(f"{where}/bundle.yaml", SITE_BUNDLE)
        self.write(f"{where}/site.yaml", SITE_MANIFESTS)

    def load(self, limits: Limits | None = None, **kwargs: object) -> DesiredState:
        return load(self.config, self.registry, limits=limits, **kwargs)  # type: ignore[arg-type]

    def issues(self, limits: Limits | None = None, **kwargs: object) -> list[str]:
        with pytest.raises(ManifestError) as info:
            self.load(limits, **kwargs)
        return [str(issue) for issue in info.value.issues]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "config"
    config.mkdir()
    settings = ProviderSettings(roots=(str(root),), allow_commands=True)
    return Tree(config, root, Registry.discover(settings))


def instance(name: str, values: str, extra: str = "", source: str = "./bundles/site") -> str:
    return (
        f"apiVersion: reconciler/v1\nkind: Bundle\nmetadata: {{name: {name}}}\n"
        f"spec:\n  source: {source}\n  namePrefix: {name}-\n  values: {values}\n{extra}"
    )


def two_sites(tree: Tree) -> None:
    tree.site_bundle()
    tree.write(
        "sites.yaml",
        instance("a", "{site: alpha, port: 8081, owners: [ann]}")
        + "---\n"
        + instance("b", "{site: beta, mode: '0600', debug: true}"),
    )


# ---------------------------------------------------------------- instances


def test_two_instances_get_their_values_prefixes_and_provenance(tree: Tree) -> None:
    two_sites(tree)
    desired = tree.load()
    assert sorted(desired.resources) == [
        "Command/a-reload",
        "Command/b-reload",
        "Directory/a-root",
        "Directory/b-root",
        "File/a-conf",
        "File/b-conf",
    ]
    a_conf, b_conf = desired.resources["File/a-conf"], desired.resources["File/b-conf"]
    assert a_conf.spec.path == f"{tree.root}/alpha/alpha.conf"  # two in one string  # type: ignore[attr-defined]
    assert a_conf.spec.content == "port 8081 debug false ${{ literal }}\n"  # type: ignore[attr-defined]
    assert b_conf.spec.content == "port 8080 debug true ${{ literal }}\n"  # type: ignore[attr-defined]
    assert b_conf.spec.mode == "0600"  # type: ignore[attr-defined]
    # names used inside the bundle follow the prefix; the location is the bundle's file
    assert a_conf.policy.depends_on == ("Directory/a-root",)
    assert desired.dependencies["Command/b-reload"] == ("File/b-conf",)
    assert desired.resources["Command/a-reload"].spec.argv == ("echo", "a", "a-")  # type: ignore[attr-defined]
    assert str(a_conf.location) == "bundles/site/site.yaml:6"
    assert a_conf.instance == "Bundle/a" and b_conf.instance == "Bundle/b"
    a = desired.instances["Bundle/a"]
    assert (a.source, str(a.location), a.parent) == ("bundles/site", "sites.yaml:1", "")
    assert a.values == {
        "site": "alpha",
        "port": 8081,
        "mode": "0644",
        "owners": ["ann"],
        "debug": False,
    }


def test_bundle_directories_are_not_manifests_of_the_tree(tree: Tree) -> None:
    tree.site_bundle()
    tree.write("empty.yaml", "# reconciler: empty\n")
    assert tree.load().resources == {}


def test_whole_values_keep_their_type_and_references_outside_stay(tree: Tree) -> None:
    tree.write(
        "shared.yaml",
        f"""
        apiVersion: reconciler/v1
        kind: Directory
        metadata: {{name: shared}}
        spec: {{path: {tree.root}/shared}}
        """,
    )
    tree.write(
        "b/bundle.yaml",
        "apiVersion: reconciler/v1\nkind: BundleDefinition\n"
        "parameters: {files: {type: list}, labels: {type: mapping, default: {a: b}}}\n",
    )
    tree.write(
        "b/f.yaml",
        f"""
        apiVersion: reconciler/v1
        kind: File
        metadata: {{name: f, labels: "${{{{ values.labels }}}}"}}
        spec: {{path: "{tree.root}/shared/${{{{ values.files[1] }}}}", content: x}}
        policy: {{dependsOn: [Directory/shared]}}
        """,
    )
    tree.write("i.yaml", instance("i", "{files: [one, two]}", source="./b"))
    res = tree.load().resources["File/i-f"]
    assert res.spec.path == f"{tree.root}/shared/two"  # type: ignore[attr-defined]
    assert res.labels == {"a": "b"}
    assert res.policy.depends_on == ("Directory/shared",)


def test_patches_merge_and_json(tree: Tree) -> None:
    tree.site_bundle()
    patches = (
        "  patches:\n"
        "    - target: {kind: File, name: conf}\n"
        "      patch: {policy: {drift: warn}, spec: {mode: null}}\n"
        "    - target: {kind: 'Dir*'}\n"
        "      patch: [{op: add, path: /spec/mode, value: '0700'}]\n"
    )
    tree.write("sites.yaml", instance("a", "{site: alpha}", patches))
    desired = tree.load()
    conf = desired.resources["File/a-conf"]
    assert conf.policy.drift == "warn" and conf.spec.mode is None  # type: ignore[attr-defined]
    assert desired.resources["Directory/a-root"].spec.mode == "0700"  # type: ignore[attr-defined]


def test_nested_bundles_add_prefixes_and_record_their_parent(tree: Tree) -> None:
    tree.site_bundle("outer/site")
    tree.write(
        "outer/bundle.yaml",
        "apiVersion: reconciler/v1\nkind: BundleDefinition\nparameters: {name: {type: string}}\n",
    )
    tree.write("outer/use.yaml", instance("web", "{site: '${{ values.name }}'}", source="./site"))
    tree.write("top.yaml", instance("team", "{name: teamsite}", source="./outer"))
    desired = tree.load()
    conf = desired.resources["File/team-web-conf"]
    assert conf.spec.path == f"{tree.root}/teamsite/teamsite.conf"  # type: ignore[attr-defined]
    assert conf.instance == "Bundle/team-web"
    inner = desired.instances["Bundle/team-web"]
    assert (inner.parent, inner.source, str(inner.location)) == (
        "Bundle/team",
        "outer/site",
        "outer/use.yaml:1",
    )


def test_instances_survive_the_tree_cache(tree: Tree, tmp_path: Path) -> None:
    two_sites(tree)
    cache = Cache(tmp_path / "cache", "fp", write=True)
    first = tree.load(cache=cache)
    second = tree.load(cache=cache)
    assert second.instances == first.instances
    assert {r.id: r.instance for r in second.resources.values()} == {
        r.id: r.instance for r in first.resources.values()
    }


# ---------------------------------------------------------------- errors at file:line


def test_values_are_checked_against_the_parameters(tree: Tree) -> None:
    tree.site_bundle()
    tree.write(
        "sites.yaml",
        instance("a", "{port: 70000, colour: red, mode: '0777', debug: 'yes', owners: x}")
        + "---\n"
        + instance("b", "{site: Beta1}"),
    )
    issues = tree.issues()
    assert issues == [
        "sites.yaml:7: spec.values.port: parameter 'port' (integer): must be at most 65535, "
        "found 70000",
        "sites.yaml:7: spec.values.colour: unknown parameter 'colour'; the bundle declares "
        "site, port, mode, owners, debug",
        "sites.yaml:7: spec.values.mode: parameter 'mode' (string): expected one of '0644', "
        "'0600', found '0777'",
        "sites.yaml:7: spec.values.debug: parameter 'debug' (boolean): expected a boolean "
        "(true or false), found 'yes'",
        "sites.yaml:7: spec.values.owners: parameter 'owners' (list): expected a list, found 'x'",
        "sites.yaml:7: spec.values: required parameter 'site' (string) is missing: short name",
        "sites.yaml:15: spec.values.site: parameter 'site' (string): 'Beta1' does not match "
        "the pattern '[a-z]+'",
    ]


def test_an_error_in_an_instantiated_manifest_names_the_file_and_the_instance(
    tree: Tree,
) -> None:
    tree.site_bundle()
    tree.write(
        "bundles/site/bad.yaml",
        "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: bad}\n"
        "spec:\n  path: $ROOT/x\n  content: x\n  mode: ${{ values.port }}\n",
    )
    tree.write("sites.yaml", "# two\n" + instance("a", "{site: alpha}"))
    (message,) = tree.issues()
    assert message.startswith("bundles/site/bad.yaml:7: spec.mode: ")
    assert message.endswith("(in Bundle/a at sites.yaml:2)")


def test_bundle_definition_errors(tree: Tree) -> None:
    tree.write(
        "b/bundle.yaml",
        """
        apiVersion: reconciler/v1
        kind: BundleDefinition
        parameters:
          a: {type: float}
          b: {type: string, required: true, default: x}
          c: {type: string, pattern: "(a+)+$"}
          d: {type: integer, minimum: 5, default: 1}
          e: {type: string, colour: red}
        """,
    )
    tree.write("b/f.yaml", "# reconciler: empty\n")
    tree.write("i.yaml", instance("i", "{}", source="./b"))
    issues = tree.issues()
    via = " (in Bundle/i at i.yaml:1)"
    assert issues[0].startswith("b/bundle.yaml:4: parameters.a.type: ")
    assert issues[1:] == [
        "b/bundle.yaml:5: parameters.b: a required parameter has no default: drop one of them"
        + via,
        "b/bundle.yaml:6: parameters.c.pattern: pattern repeats a repetition (such as (a+)+), "
        "which can take exponential time" + via,
        "b/bundle.yaml:7: parameters.d: default: must be at least 5, found 1" + via,
        "b/bundle.yaml:8: parameters.e.colour: unknown field; expected one of type, "
        "description, required, default, enum, pattern, minimum, maximum" + via,
    ]


def test_substitution_errors(tree: Tree) -> None:
    tree.write(
        "b/bundle.yaml",
        "apiVersion: reconciler/v1\nkind: BundleDefinition\n"
        "parameters: {l: {type: list, default: [1]}, s: {type: secret}}\n",
    )
    tree.write(
        "b/f.yaml",
        """
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: f}
        spec: {path: "$ROOT/${{ values.nope }}", content: x}
        ---
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: g}
        spec: {path: "$ROOT/${{ values.l }}", content: x}
        ---
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: h}
        spec: {path: "$ROOT/h", content: "password=${{ values.s }}"}
        ---
        apiVersion: reconciler/v1
        kind: File
        metadata: {name: k}
        spec: {path: "$ROOT/${{ os.environ }}", content: x}
        """,
    )
    tree.write(
        "i.yaml", instance("i", "{s: {valueFrom: {env: RECONCILER_SECRET_X}}}", source="./b")
    )
    issues = tree.issues()
    via = " (in Bundle/i at i.yaml:1)"
    assert issues == [
        "b/f.yaml:4: spec.path: unknown parameter 'nope' in ${{ values.nope }}; the bundle "
        "declares l, s" + via,
        "b/f.yaml:9: spec.path: ${{ values.l }} has a list: only a value that stands alone in "
        "its field may be a list, a mapping or empty" + via,
        "b/f.yaml:14: spec.content: secret parameter 's' can only stand alone in its field "
        "(`field: ${{ values.s }}`): its reference is resolved by the provider" + via,
        "b/f.yaml:19: spec.path: ${{ os.environ }}: expected values.NAME or bundle.name / "
        "bundle.prefix" + via,
    ]


def test_patch_errors(tree: Tree) -> None:
    tree.site_bundle()
    patches = (
        "  patches:\n"
        "    - target: {kind: Symlink}\n"
        "      patch: {spec: {mode: '0600'}}\n"
        "    - target: {name: conf}\n"
        "      patch: {metadata: {name: other}}\n"
        "    - target: {name: root}\n"
        "      patch: [{op: remove, path: /spec/nothing}]\n"
    )
    tree.write("sites.yaml", instance("a", "{site: alpha}", patches))
    issues = tree.issues()
    assert issues[0] == "sites.yaml:9: spec.patches[0].target: matches no document of the bundle"
    assert issues[1] == (
        "sites.yaml:12: spec.patches[1].patch: File/conf: a patch cannot change apiVersion, "
        "kind or name"
    )
    assert issues[2].startswith("sites.yaml:14: spec.patches[2].patch: Directory/root: ")
    assert len(issues) == 3


def test_two_instances_with_one_prefix_collide(tree: Tree) -> None:
    tree.site_bundle()
    text = instance("a", "{site: alpha}") + "---\n" + instance("a", "{site: beta}")
    tree.write("sites.yaml", text.replace("name: a}", "name: b}", 1))
    issues = tree.issues()
    assert issues[0].startswith(
        "bundles/site/site.yaml:3: metadata.name: duplicate resource id Directory/a-root "
        "(first defined at bundles/site/site.yaml:1, made by Bundle/b); give bundle instances "
        "different namePrefix values"
    )
    assert issues[0].endswith("(in Bundle/a at sites.yaml:9)")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("./nowhere", "sites.yaml:5: spec.source: nowhere: no such directory"),
        ("./plain", "sites.yaml:5: spec.source: plain: no bundle.yaml in it"),
        ("../outside", "sites.yaml:5: spec.source: ../outside leads outside the config tree"),
        ("/etc", "sites.yaml:5: spec.source: expected a directory relative to this file"),
        ("./link", "sites.yaml:5: spec.source: ./link is a symbolic link to outside the config"),
        ("{repo: /x, ref: main}", "sites.yaml:5: spec.source: remote bundles cannot be fetched"),
    ],
)
def test_source_errors(tree: Tree, tmp_path: Path, source: str, message: str) -> None:
    (tree.config / "plain").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "bundle.yaml").write_text(SITE_BUNDLE)
    os.symlink(outside, tree.config / "link")
    tree.write("sites.yaml", instance("a", "{site: a}", source=source))
    (issue,) = tree.issues()
    assert issue.startswith(message)


def test_a_bundle_cannot_instantiate_itself(tree: Tree) -> None:
    tree.write("b/bundle.yaml", "apiVersion: reconciler/v1\nkind: BundleDefinition\n")
    tree.write("b/self.yaml", instance("again", "{}", source="."))
    tree.write("top.yaml", instance("top", "{}", source="./b"))
    (issue,) = tree.issues()
    assert issue.startswith("b/self.yaml:5: spec.source: bundle cycle: b -> b")
    assert issue.endswith("(in Bundle/top at top.yaml:1)")


def test_depth_and_instance_limits_are_crossed(tree: Tree) -> None:
    tree.write("b/bundle.yaml", "apiVersion: reconciler/v1\nkind: BundleDefinition\n")
    tree.write("b/c/bundle.yaml", "apiVersion: reconciler/v1\nkind: BundleDefinition\n")
    tree.write("b/c/empty.yaml", "# reconciler: empty\n")
    tree.write("b/inner.yaml", instance("inner", "{}", source="./c"))
    tree.write("top.yaml", "\n---\n".join(instance(f"t{i}", "{}", source="./b") for i in range(3)))
    assert len(tree.load().instances) == 6
    deep = tree.issues(Limits(max_bundle_depth=1))
    assert len(deep) == 3  # once per outer instance, each naming it
    assert deep[1] == (
        "b/inner.yaml:5: spec.source: bundles nested deeper than 1 (max_bundle_depth) "
        "(in Bundle/t1 at top.yaml:10)"
    )
    many = tree.issues(Limits(max_bundle_instances=4))
    assert many[-1].startswith("top.yaml:")
    assert "over the limit of 4 bundle instances (max_bundle_instances)" in many[-1]


def test_a_bundle_has_no_policy(tree: Tree) -> None:
    tree.site_bundle()
    tree.write("sites.yaml", instance("a", "{site: a}", "policy: {drift: warn}\n"))
    assert tree.issues() == [
        "sites.yaml:8: policy: a Bundle has no policy: set its resources' policy with patches"
    ]


class _Fetcher:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, str, str]] = []

    def fetch(self, repo: str, ref: str, path: str) -> RemoteTree:
        self.calls.append((repo, ref, path))
        return RemoteTree(self.root / path, "c0ffee" * 6 + "abcd")


def test_a_remote_bundle_is_expanded_from_the_fetched_tree(tree: Tree, tmp_path: Path) -> None:
    """The fetcher here is a directory; tests/e2e/test_bundles_remote.py fetches
    from a real git server."""
    remote = tmp_path / "remote"
    (remote / "site").mkdir(parents=True)
    (remote / "site/bundle.yaml").write_text(SITE_BUNDLE)
    manifests = SITE_MANIFESTS.lstrip().replace("$ROOT", str(tree.root))
    (remote / "site/site.yaml").write_text(manifests)
    source = "{repo: 'https://user:pw@git.example/b.git', ref: main, path: site}"
    tree.write("sites.yaml", instance("a", "{site: alpha, port: 1}", source=source))
    fetcher = _Fetcher(remote)
    issues = tree.issues(remote=fetcher)
    assert issues == [
        "sites.yaml:7: spec.values.port: parameter 'port' (integer): must be at least 1024, found 1"
    ]
    tree.write("sites.yaml", instance("a", "{site: alpha}", source=source))
    desired = tree.load(remote=fetcher)
    a = desired.instances["Bundle/a"]
    assert (a.source, a.ref, a.commit) == (
        "https://git.example/b.git//site",
        "main",
        "c0ffee" * 6 + "abcd",
    )
    assert str(desired.resources["File/a-conf"].location) == (
        "https://git.example/b.git//site@c0ffeec0ffee/site.yaml:6"
    )


def test_issue_str_names_the_instance() -> None:
    issue = Issue("b/f.yaml", 3, "spec.mode", "bad", "Bundle/x at i.yaml:1")
    assert str(issue) == "b/f.yaml:3: spec.mode: bad (in Bundle/x at i.yaml:1)"


def test_a_relative_config_path_does_not_let_a_source_out(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "bundle.yaml").write_text(SITE_BUNDLE)
    tree.write("sites.yaml", instance("a", "{site: a}", source="../outside"))
    monkeypatch.chdir(tree.config)
    with pytest.raises(ManifestError) as info:
        load(Path("."), tree.registry)
    assert [str(i) for i in info.value.issues] == [
        "sites.yaml:5: spec.source: ../outside leads outside the config tree"
    ]
    tree.site_bundle()
    tree.write("sites.yaml", instance("a", "{site: alpha}"))
    assert "File/a-conf" in load(Path("."), tree.registry).resources


def test_values_filled_into_a_document_are_bounded(tree: Tree) -> None:
    tree.write(
        "b/bundle.yaml",
        "apiVersion: reconciler/v1\nkind: BundleDefinition\nparameters: {big: {type: string}}\n",
    )
    fields = "\n".join(f"  k{i}: ${{{{ values.big }}}}" for i in range(20))
    tree.write(
        "b/f.yaml",
        "apiVersion: reconciler/v1\nkind: File\nmetadata: {name: f}\n"
        f"spec:\n  path: $ROOT/f\n  content: x\n{fields}\n",
    )
    tree.write("i.yaml", instance("i", "{big: " + "x" * 1000 + "}", source="./b"))
    issues = tree.issues(Limits(max_expanded_bytes=10_000))
    assert issues == [
        "b/f.yaml:17: spec.k10: the values filled into this document are over 10000 "
        "characters (max_expanded_bytes) (in Bundle/i at i.yaml:1)"
    ]


def test_remote_bundle_sources_are_bounded(tree: Tree, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    for name in ("a", "b", "c"):
        (remote / name).mkdir(parents=True)
        (remote / name / "bundle.yaml").write_text(
            "apiVersion: reconciler/v1\nkind: BundleDefinition\n"
        )
        (remote / name / "e.yaml").write_text("# reconciler: empty\n")
    docs = [
        instance(
            f"i{k}{name}",
            "{}",
            source=f"{{repo: 'https://git.example/b.git', ref: main, path: {name}}}",
        )
        for name in ("a", "b", "c")
        for k in range(2)
    ]
    tree.write("i.yaml", "---\n".join(docs))
    fetcher = _Fetcher(remote)
    assert len(tree.load(remote=fetcher).instances) == 6
    issues = tree.issues(Limits(max_remote_bundles=2), remote=_Fetcher(remote))
    assert issues == [
        "i.yaml:37: spec.source: over the limit of 2 remote bundle sources (max_remote_bundles)",
        "i.yaml:45: spec.source: over the limit of 2 remote bundle sources (max_remote_bundles)",
    ]
