"""Sharding and high availability together (issue 13): two shards, a and b, two
real daemons each (four processes), one git repository declaring the shards, one
PostgreSQL database for all of them.

Each shard elects its own leader (the `ha` block of /api/v1/status and the
`reconciler_leader` gauge), each leader enforces its shard's file, and the
standbys of each shard follow their own leader. SIGKILL of shard a's leader:
a's standby takes over within 15 s at a higher epoch while b's leader leads on
at the same epoch; both then enforce a new commit. In the database the rows of
each shard stay apart: a's resources, statuses and events under shard a, b's
under b, each written at its own shard's epochs.

The clusters are tests/e2e/ha_cluster.py's, the manifests test_sharding's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.daemon_harness import Daemons, read_text
from tests.e2e.ha_cluster import Cluster, status
from tests.e2e.test_sharding import SHARDS, ids, labelled, metric
from tests.gitservers import GitDaemon, WorkClone
from tests.postgres import Server

pytestmark = pytest.mark.timeout(120)

TAKEOVER_LIMIT = 15.0


@pytest.fixture
def shards(
    postgres_server: Server, daemons: Daemons, root: Path, config: Path, git_server: GitDaemon
) -> Iterator[dict[str, Cluster]]:
    """Shard a's and shard b's clusters on one database, following `git_server`."""
    url = git_server.url()
    a = Cluster(postgres_server, daemons, root, config, shard="a", repo=url)
    b = Cluster(postgres_server, daemons, root, config, shard="b", repo=url, database=a.database)
    try:
        yield {"a": a, "b": b}
    finally:
        b.close()
        a.close()


def rows(cluster: Cluster, table: str) -> set[tuple[str, str]]:
    """(shard, id) of every row of `table`, read out of band."""
    found = cluster.server.sql(f"SELECT shard, id FROM {table}", dbname=cluster.database)
    return {(shard, rid) for shard, rid in found}


def epochs(cluster: Cluster, shard: str) -> set[int]:
    """The epochs that wrote shard `shard`'s resources and events."""
    found = cluster.server.sql(
        "SELECT epoch FROM reconciler_resources WHERE shard = %(s)s "
        "UNION SELECT epoch FROM reconciler_events WHERE shard = %(s)s",
        {"s": shard},
        dbname=cluster.database,
    )
    return {epoch for (epoch,) in found}


def follows(cluster: Cluster, name: str, lead: str) -> None:
    """Daemon `name` is a standby of `lead`, its read API showing its shard's part
    of the store only."""
    daemon = cluster.members[name]
    cluster.standby(name)
    daemon.wait_until(
        lambda: (ha := status(daemon)) is not None and ha["leader"]["id"] == lead,
        f"{name} to follow {lead}",
    )
    assert metric(daemon, "reconciler_leader") == 0
    assert cluster.shard is not None
    expected = {f"File/{cluster.shard}"}
    daemon.wait_until(lambda: ids(daemon) == expected, f"{name}'s inventory to be {expected}")


def test_each_shard_has_its_own_leader_and_survives_its_loss_alone(
    shards: dict[str, Cluster], work: WorkClone, root: Path
) -> None:
    files = {"a": root / "a.conf", "b": root / "b.conf"}
    manifests = {
        f"{name}.yaml": labelled(name, path, f"{name}\n", {"team": name})
        for name, path in files.items()
    }
    first = work.commit("two shards", {"shards.yaml": SHARDS, **manifests})
    work.push()
    for name, cluster in shards.items():
        cluster.start(f"{name}1")
    for name, cluster in shards.items():
        cluster.start(f"{name}2")

    leaders: dict[str, tuple[str, int]] = {}
    for name, cluster in shards.items():
        leaders[name] = cluster.leader()
        lead, _ = leaders[name]
        leader = cluster.members[lead]
        assert leader.wait_revision(first)["shards"]["name"] == name
        leader.wait_file(files[name], f"{name}\n")
        leader.wait_state(f"File/{name}", "InSync")
        assert metric(leader, "reconciler_leader") == 1
        for other in cluster.members:
            if other != lead:
                follows(cluster, other, lead)
    a, b = shards["a"], shards["b"]
    (epoch_a, epoch_b) = (leaders["a"][1], leaders["b"][1])
    assert rows(a, "reconciler_resources") == {("a", "File/a"), ("b", "File/b")}
    assert rows(a, "reconciler_status") == {("a", "File/a"), ("b", "File/b")}
    assert rows(a, "reconciler_events") == {("a", "File/a"), ("b", "File/b")}
    lease = a.server.sql("SELECT shard, holder, epoch FROM reconciler_lease", dbname=a.database)
    assert set(lease) == {("a", *leaders["a"]), ("b", *leaders["b"])}

    # shard a loses its leader; b's leads on, at the same epoch
    seconds, old, new, new_epoch = a.takeover("kill")
    print(f"shard a's takeover after SIGKILL: {seconds:.2f} s")
    assert seconds < TAKEOVER_LIMIT, f"shard a's takeover took {seconds:.1f} s"
    assert (old, new_epoch > epoch_a) == (leaders["a"][0], True)
    assert b.leader() == leaders["b"]
    lead_b = b.members[leaders["b"][0]]
    assert "stepping down" not in lead_b.logs()
    assert b.server.sql(
        "SELECT holder, epoch FROM reconciler_lease WHERE shard = 'b'", dbname=b.database
    ) == [leaders["b"]]
    follows(a, old, new)  # back, as a's standby

    # both shards' leaders enforce the next commit; a's at its new epoch
    second = work.commit(
        "both change",
        {
            name: labelled(stem, files[stem], f"{stem} 2\n", {"team": stem})
            for name, stem in (("a.yaml", "a"), ("b.yaml", "b"))
        },
    )
    work.push()
    for name, cluster, lead in (("a", a, new), ("b", b, leaders["b"][0])):
        leader = cluster.members[lead]
        assert leader.sync().status == 202
        leader.wait_revision(second)
        leader.wait_file(files[name], f"{name} 2\n")
        leader.wait_state(f"File/{name}", "InSync")
    assert (read_text(files["a"]), read_text(files["b"])) == ("a 2\n", "b 2\n")
    assert rows(a, "reconciler_resources") == {("a", "File/a"), ("b", "File/b")}
    assert epochs(a, "b") == {epoch_b}
    assert max(epochs(a, "a")) == new_epoch and min(epochs(a, "a")) == epoch_a
