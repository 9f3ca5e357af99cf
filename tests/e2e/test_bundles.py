"""Bundles end to end: a remote bundle served by a real git server, used by the
CLI and by the daemon; removing an instance prunes exactly what it made."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.conftest import Sandbox
from tests.e2e.daemon_harness import Daemons
from tests.gitservers import GitDaemon, GitRepos, WorkClone

BUNDLE = """\
apiVersion: reconciler/v1
kind: BundleDefinition
parameters:
  name: {type: string, required: true, pattern: "[a-z]+"}
  greeting: {type: string, default: hello}
"""

MANIFEST = """\
apiVersion: reconciler/v1
kind: File
metadata: {name: greeting}
spec:
  path: ROOT/${{ values.name }}.txt
  content: "${{ values.greeting }} from VERSION\\n"
"""


def instance(name: str, source: str, values: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: reconciler/v1
        kind: Bundle
        metadata: {{name: {name}}}
        spec:
          source: {source}
          namePrefix: {name}-
          values: {values}
        """
    )


def publish(work: WorkClone, root: Path, version: str) -> str:
    text = MANIFEST.replace("ROOT", str(root)).replace("VERSION", version)
    sha = work.commit(version, {"site/bundle.yaml": BUNDLE, "site/greeting.yaml": text})
    work.push()
    return sha


def test_a_remote_bundle_follows_its_branch_or_stays_on_its_commit(
    repos: GitRepos, git_server: GitDaemon, sandbox: Sandbox
) -> None:
    repos.create("bundles.git")
    work = repos.clone("bundles.git")
    first = publish(work, sandbox.root, "v1")
    url = git_server.url("bundles.git")
    branch = f"{{repo: '{url}', ref: main, path: site}}"
    sandbox.write("a.yaml", instance("a", branch, "{name: alpha}"))
    plan = json.loads(sandbox.run("plan", "--format", "json", check=2).stdout)
    assert [c.get("instance") for c in plan["changes"]] == ["Bundle/a"], plan
    sandbox.run("apply", check=0)
    assert (sandbox.root / "alpha.txt").read_text() == "hello from v1\n"

    publish(work, sandbox.root, "v2")  # the branch moves: the next load follows it
    sandbox.run("apply", check=0)
    assert (sandbox.root / "alpha.txt").read_text() == "hello from v2\n"

    pinned = f"{{repo: '{url}', ref: '{first}', path: site}}"
    sandbox.write("a.yaml", instance("a", pinned, "{name: alpha, greeting: hi}"))
    sandbox.run("apply", check=0)
    assert (sandbox.root / "alpha.txt").read_text() == "hi from v1\n"

    git_server.stop()  # a pinned commit is served from the cache
    sandbox.write("a.yaml", instance("a", pinned, "{name: alpha, greeting: hey}"))
    sandbox.run("apply", check=0)
    assert (sandbox.root / "alpha.txt").read_text() == "hey from v1\n"

    sandbox.write("a.yaml", instance("a", branch, "{name: alpha}"))  # main needs the server
    failed = sandbox.run("plan", check=1)
    assert "a.yaml:5: spec.source: cannot fetch site at 'main' of" in failed.stderr


def test_removing_an_instance_prunes_exactly_what_it_made(sandbox: Sandbox) -> None:
    sandbox.write("bundles/g/bundle.yaml", BUNDLE)
    sandbox.write("bundles/g/greeting.yaml", MANIFEST.replace("ROOT", str(sandbox.root)))
    both = instance("a", "./bundles/g", "{name: alpha}") + "---\n"
    both += instance("b", "./bundles/g", "{name: beta}")
    sandbox.write("sites.yaml", both)
    sandbox.write(
        "flat.yaml",
        f"apiVersion: reconciler/v1\nkind: File\nmetadata: {{name: flat}}\n"
        f"spec: {{path: {sandbox.root}/flat.txt, content: x}}\n",
    )
    sandbox.run("apply", check=0)
    assert sorted(p.name for p in sandbox.root.iterdir()) == ["alpha.txt", "beta.txt", "flat.txt"]

    sandbox.write("sites.yaml", instance("b", "./bundles/g", "{name: beta}"))
    plan = sandbox.run("plan", check=2).stdout
    assert "- File/a-greeting" in plan and "(from Bundle/a)" in plan, plan
    applied = sandbox.run("apply", check=0).stdout
    assert "1 deleted" in applied, applied
    assert sorted(p.name for p in sandbox.root.iterdir()) == ["beta.txt", "flat.txt"]


def test_the_daemon_shows_remote_instances_and_their_commit(
    repos: GitRepos, git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons
) -> None:
    repos.create("bundles.git")
    bundles = repos.clone("bundles.git")
    sha = publish(bundles, root, "v1")
    source = f"{{repo: '{git_server.url('bundles.git')}', ref: main, path: site}}"
    head = work.commit("use the bundle", {"a.yaml": instance("a", source, "{name: alpha}")})
    work.push()
    daemon = daemons.start(git_server.url(), root=root)
    status = daemon.wait_revision(head)
    assert (root / "alpha.txt").read_text() == "hello from v1\n"
    (inst,) = status["instances"]
    assert inst["id"] == "Bundle/a" and inst["ref"] == "main" and inst["commit"] == sha
    assert inst["resources"] == 1
    resource = daemon.resource("File/a-greeting")
    assert resource is not None and resource["instance"] == "Bundle/a"
    daemon.stop()
