"""Bundle instances end to end, with real Bundle documents and the real CLI: every
resource remembers the instance that made it (events, graph, plan), and removing a
`Bundle` document prunes exactly what its instance made, under the prune share
limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Sandbox, doc, docs
from tests.e2e.daemon_harness import Daemons, run_cli, wait_until
from tests.gitservers import GitDaemon, WorkClone

BUNDLE = """
apiVersion: reconciler/v1
kind: BundleDefinition
description: a site directory and its index page
parameters:
  dir: {type: string, required: true}
  site: {type: string, required: true}
"""

SITE = """
apiVersion: reconciler/v1
kind: Directory
metadata: {name: dir}
spec: {path: "${{ values.dir }}"}
---
apiVersion: reconciler/v1
kind: File
metadata: {name: index}
spec:
  path: "${{ values.dir }}/index.html"
  content: "hello ${{ values.site }}\\n"
"""


def site(name: str, root: Path) -> str:
    spec = {
        "source": "./bundles/web",
        "namePrefix": f"{name}-",
        "values": {"dir": str(root / name), "site": name},
    }
    return doc("Bundle", name, spec)


def write_tree(sandbox: Sandbox, *sites: str) -> None:
    sandbox.write("bundles/web/bundle.yaml", BUNDLE)
    sandbox.write("bundles/web/site.yaml", SITE)
    motd = doc("File", "motd", {"path": str(sandbox.root / "motd"), "content": "hi\n"})
    sandbox.write("sites.yaml", docs(motd, *(site(name, sandbox.root) for name in sites)))


def events(sandbox: Sandbox, *args: str) -> list[dict[str, Any]]:
    out = sandbox.run("events", "--state-dir", str(sandbox.state), "--json", *args, check=0)
    found: list[dict[str, Any]] = json.loads(out.stdout)["events"]
    return found


@pytest.fixture
def two_sites(sandbox: Sandbox) -> Sandbox:
    write_tree(sandbox, "a", "b")
    sandbox.run("apply", check=0)
    return sandbox


def test_events_name_the_instance_of_each_resource(two_sites: Sandbox) -> None:
    assert (two_sites.root / "a" / "index.html").read_text() == "hello a\n"
    made = {e["id"]: e["instance"] for e in events(two_sites, "--limit", "1000")}
    assert made == {
        "Directory/a-dir": "Bundle/a",
        "File/a-index": "Bundle/a",
        "Directory/b-dir": "Bundle/b",
        "File/b-index": "Bundle/b",
        "File/motd": None,
    }
    only_b = events(two_sites, "--instance", "Bundle/b")
    assert {e["id"] for e in only_b} == {"Directory/b-dir", "File/b-index"}


def test_graph_groups_resources_by_instance(two_sites: Sandbox) -> None:
    dot = two_sites.run("graph", "--format", "dot", check=0).stdout
    for name in ("a", "b"):
        assert f'subgraph "cluster_Bundle/{name}" {{ label="Bundle/{name}\\nbundles/web";' in dot
    cluster_a = dot.split('subgraph "cluster_Bundle/a"', 1)[1].split("}", 1)[0]
    assert '"Directory/a-dir"' in cluster_a and '"File/a-index"' in cluster_a
    assert "motd" not in cluster_a
    graph = json.loads(two_sites.run("graph", "--format", "json", check=0).stdout)
    assert {r["id"]: r["instance"] for r in graph["resources"]}["File/b-index"] == "Bundle/b"
    assert [(i["id"], i["source"], i["resources"]) for i in graph["instances"]] == [
        ("Bundle/a", "bundles/web", ["Directory/a-dir", "File/a-index"]),
        ("Bundle/b", "bundles/web", ["Directory/b-dir", "File/b-index"]),
    ]
    mermaid = two_sites.run("graph", check=0).stdout
    assert 'subgraph g0["Bundle/a<br>bundles/web"]' in mermaid


def test_removing_a_bundle_document_prunes_exactly_what_its_instance_made(
    two_sites: Sandbox,
) -> None:
    write_tree(two_sites, "b")
    plan = two_sites.run("plan", check=2).stdout
    deleting = [line for line in plan.splitlines() if line.lstrip().startswith("- ")]
    assert len(deleting) == 2, plan
    assert all("instance Bundle/a removed" in line for line in deleting), plan
    planned = json.loads(two_sites.run("plan", "--format", "json", check=2).stdout)
    assert planned  # the JSON plan parses; its lines carry the instance (diff.py renders it)
    two_sites.run("apply", check=0)
    assert not (two_sites.root / "a").exists()
    assert (two_sites.root / "b" / "index.html").read_text() == "hello b\n"
    assert (two_sites.root / "motd").is_file()
    pruned = [e for e in events(two_sites, "--instance", "Bundle/a") if e["event"] == "pruned"]
    assert sorted((e["id"], e["reason"]) for e in pruned) == [
        ("Directory/a-dir", "deleted (created by reconciler), instance Bundle/a removed"),
        ("File/a-index", "deleted (created by reconciler), instance Bundle/a removed"),
    ]


def test_removing_instances_over_the_prune_share_is_refused(two_sites: Sandbox) -> None:
    write_tree(two_sites)  # both instances gone: 4 of 5 resources
    refused = two_sites.run("apply")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "would prune 4 of 5 managed resources" in refused.stdout + refused.stderr
    assert (two_sites.root / "a" / "index.html").is_file()
    assert (two_sites.root / "b" / "index.html").is_file()


def test_the_daemon_shows_instances_and_prunes_a_removed_one(
    git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons
) -> None:
    """The real daemon following a git repository: `/api/v1/status` lists the
    revision's instances, each resource names its instance, `reconciler status`
    groups them, and a commit removing a `Bundle` prunes its resources with
    events that name it."""
    motd = doc("File", "motd", {"path": str(root / "motd"), "content": "hi\n"})
    tree = {
        "bundles/web/bundle.yaml": BUNDLE.lstrip(),
        "bundles/web/site.yaml": SITE.lstrip(),
        "sites.yaml": docs(motd, site("a", root), site("b", root)),
    }
    first = work.commit("two sites", tree)
    work.push()
    daemon = daemons.start(git_server.url(), root=root)
    daemon.wait_revision(first)
    daemon.settle()
    status = daemon.status()
    assert [(i["id"], i["source"], i["resources"]) for i in status["instances"]] == [
        ("Bundle/a", "bundles/web", 2),
        ("Bundle/b", "bundles/web", 2),
    ]
    resource = json.loads(daemon.request("GET", "/api/v1/resources/File/a-index").body)
    assert resource["instance"] == "Bundle/a"
    shown = run_cli("status", "--url", daemon.url)
    assert shown.returncode == 0, shown.stderr
    assert "instances  2: Bundle/a (bundles/web, 2), Bundle/b (bundles/web, 2)" in shown.stdout
    rows = [line.split()[:2] for line in shown.stdout.split("\n\n", 1)[1].splitlines()]
    assert rows[:3] == [
        ["INSTANCE", "RESOURCE"],
        ["-", "File/motd"],
        ["Bundle/a", "Directory/a-dir"],
    ]

    second = work.commit("retire site a", {"sites.yaml": docs(motd, site("b", root))})
    work.push()
    assert daemon.sync().status == 202
    daemon.wait_revision(second)
    wait_until(lambda: not (root / "a").exists(), "site a pruned")
    daemon.settle()
    assert (root / "b" / "index.html").is_file()
    assert [i["id"] for i in daemon.status()["instances"]] == ["Bundle/b"]
    pruned = daemon.events(instance="Bundle/a", limit=1000)
    assert sorted(e["id"] for e in pruned if e["event"] == "pruned") == [
        "Directory/a-dir",
        "File/a-index",
    ]
    daemon.stop()
