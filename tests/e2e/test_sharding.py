"""Sharding end to end (issue 13, decision 0152): two real daemons, each with its
own SQLite state directory, follow one git repository with --shard a and
--shard b and enforce disjoint parts of it. A relabel commit hands a resource
from a to b without anyone deleting it; what no shard or two shards claim is
applied by neither and reported by status and metrics; a dependency across
shards rejects the revision on both daemons, naming both resources and shards.

Real daemon processes, a real git server on 127.0.0.1, real directories; every
wait polls a condition against a deadline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.daemon_harness import DaemonProcess, Daemons, assert_stays, docs, read_text
from tests.gitservers import GitDaemon, WorkClone

SHARDS = docs(
    *(
        yaml.safe_dump(
            {
                "apiVersion": "reconciler/v1",
                "kind": "Shard",
                "metadata": {"name": name},
                "spec": {"selector": selector},
            },
            sort_keys=False,
        )
        for name, selector in [
            ("a", {"matchLabels": {"team": "a"}}),
            ("b", {"matchExpressions": [{"key": "team", "operator": "In", "values": ["b"]}]}),
            ("ops", {"matchExpressions": [{"key": "ops", "operator": "Exists"}]}),
        ]
    )
)


def labelled(
    name: str, path: Path, content: str, labels: dict[str, str], depends: str | None = None
) -> str:
    data: dict[str, Any] = {
        "apiVersion": "reconciler/v1",
        "kind": "File",
        "metadata": {"name": name, "labels": labels},
        "spec": {"path": str(path), "content": content},
    }
    if depends:
        data["policy"] = {"dependsOn": [depends]}
    return yaml.safe_dump(data, sort_keys=False)


def metric(daemon: DaemonProcess, name: str) -> float | None:
    text = daemon.request("GET", "/metrics").body.decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return None if match is None else float(match.group(1))


def ids(daemon: DaemonProcess) -> set[str]:
    return {r["id"] for r in daemon.resources()}


def test_two_shards_enforce_disjoint_parts_and_hand_a_resource_over(
    git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons, tmp_path: Path
) -> None:
    a, b, moved = root / "a.conf", root / "b.conf", root / "moved.conf"
    free, both = root / "free.conf", root / "both.conf"
    first = work.commit(
        "sharded",
        {
            "shards.yaml": SHARDS,
            "a.yaml": labelled("a", a, "a\n", {"team": "a"}),
            "b.yaml": labelled("b", b, "b\n", {"team": "b"}),
            "moved.yaml": labelled("moved", moved, "from a\n", {"team": "a"}),
            "free.yaml": labelled("free", free, "nobody\n", {"team": "c"}),
            "both.yaml": labelled("both", both, "two\n", {"team": "a", "ops": "yes"}),
        },
    )
    work.push()
    url = git_server.url()
    shard_a = daemons.start(url, root=root, state_dir=tmp_path / "a", args=["--shard", "a"])
    shard_b = daemons.start(url, root=root, state_dir=tmp_path / "b", args=["--shard", "b"])
    status_a = shard_a.wait_revision(first)
    shard_b.wait_revision(first)
    assert status_a["shards"] == {
        "name": "a",
        "declared": ["a", "b", "ops"],
        "claimed": 2,
        "unclaimed_count": 1,
        "unclaimed": ["File/free"],
        "conflicting_count": 1,
        "conflicting": [{"id": "File/both", "shards": ["a", "ops"]}],
    }
    assert metric(shard_a, "reconciler_shard_unclaimed_resources") == 1
    assert metric(shard_b, "reconciler_shard_conflicting_resources") == 1

    assert (read_text(a), read_text(moved), read_text(b)) == ("a\n", "from a\n", "b\n")
    assert read_text(free) is None and read_text(both) is None  # applied by no shard
    assert ids(shard_a) == {"File/a", "File/moved"} and ids(shard_b) == {"File/b"}
    # the relabel: a, which created the file, releases it (never deletes it) ...
    relabel = work.commit(
        "moved to b", {"moved.yaml": labelled("moved", moved, "from b\n", {"team": "b"})}
    )
    work.push()
    shard_a.sync()
    shard_a.wait_revision(relabel)
    shard_a.wait_until(lambda: "File/moved" not in ids(shard_a), "a to forget File/moved")
    assert read_text(moved) == "from a\n"
    released = [e for e in shard_a.events(resource="File/moved") if "released" in str(e)]
    assert released and "shard b" in str(released[-1]), shard_a.events(resource="File/moved")
    # ... and b takes it over; a later pass of a does not touch it
    shard_b.sync()
    shard_b.wait_revision(relabel)
    shard_b.wait_file(moved, "from b\n")
    shard_b.wait_state("File/moved", "InSync")
    shard_a.sync()
    assert_stays(lambda: read_text(moved) == "from b\n", "b's file to stay", seconds=1.0)

    # a dependency across shards: both daemons reject the revision, naming both
    crossing = work.commit(
        "b depends on a",
        {"b.yaml": labelled("b", b, "b2\n", {"team": "b"}, depends="File/a")},
    )
    work.push()
    expected = (
        "b.yaml:14: policy.dependsOn[0]: File/b of shard b depends on File/a, of shard a: "
        "a dependency across shards; give both the labels of one shard"
    )
    for daemon in (shard_a, shard_b):
        daemon.sync()
        rejected = daemon.wait_until(
            lambda d=daemon: (s := d.status())["rejected"] and s["rejected"],  # type: ignore[misc]
            "the crossing revision to be rejected",
        )
        assert rejected["revision"] == crossing and rejected["errors"] == [expected]
        assert daemon.status()["revision"]["id"] == relabel  # the last good stays
    assert read_text(b) == "b\n"


def test_a_shard_the_repository_does_not_declare_is_an_error_at_the_first_load(
    git_server: GitDaemon, work: WorkClone, root: Path, daemons: Daemons, tmp_path: Path
) -> None:
    sha = work.commit(
        "sharded",
        {"shards.yaml": SHARDS, "a.yaml": labelled("a", root / "a.conf", "a\n", {"team": "a"})},
    )
    work.push()
    url = git_server.url()
    daemon = daemons.start(
        url, root=root, state_dir=tmp_path / "z", args=["--shard", "z"], ready=False
    )
    rejected = daemon.wait_until(
        lambda: (s := daemon.status())["rejected"] and s["rejected"], "the revision rejected"
    )
    assert rejected["revision"] == sha
    assert rejected["errors"] == [
        "--shard z: the revision declares no Shard named z (declared: a, b, ops)"
    ]
    # without --shard, a daemon is refused a revision that declares shards
    plain = daemons.start(url, root=root, state_dir=tmp_path / "plain", ready=False)
    rejected = plain.wait_until(
        lambda: (s := plain.status())["rejected"] and s["rejected"], "the revision rejected"
    )
    assert rejected["errors"] == [
        "shards.yaml:1: the revision declares shards (a, b, ops) but this daemon has no "
        "--shard: run one daemon per shard, each with --shard NAME"
    ]
    assert read_text(root / "a.conf") is None
