"""High availability and guard-less Commands: their run record is in the shared
PostgreSQL store (decision 0151), so a standby that takes over after the
leader's SIGKILL finds the Command done and does not run it again; a changed
spec runs once, under the new leader's epoch.

Two real daemons, each with a state directory of its own (the record is not
there), one database; the Command appends "$RECONCILER_DAEMON_ID
$RECONCILER_EPOCH" to a log, which tells who ran it and when.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.daemon_harness import doc, docs, file_doc
from tests.e2e.ha_cluster import Cluster

pytestmark = pytest.mark.timeout(180)


def write(cluster: Cluster, version: int, secret: Path | None = None) -> None:
    """A file and a Command with no guard at all: only its run record says it ran.
    With `secret`, the Command's environment holds a secret read from that file
    (its run record's name then digests it with the database's shared key)."""
    stamp = f'echo "$RECONCILER_DAEMON_ID $RECONCILER_EPOCH" >> {cluster.log} # v{version}'
    spec: dict[str, object] = {"shell": True, "command": stamp}
    if secret is not None:
        spec["env"] = {"TOKEN": {"valueFrom": {"file": str(secret)}}}
    (cluster.config / "ha.yaml").write_text(
        docs(
            file_doc("a", cluster.root / "a.txt", "alpha\n"),
            doc("Command", "stamp", spec),
        )
    )


@pytest.mark.parametrize("with_secret", [False, True], ids=["plain", "secret-env"])
def test_a_new_leader_does_not_run_a_converged_command_again(
    cluster: Cluster, with_secret: bool, tmp_path: Path
) -> None:
    secret = None
    if with_secret:  # each daemon's state directory has its own keys, the database one
        secret = tmp_path / "token"
        secret.write_text("t0ken-for-the-command\n")
    write(cluster, 1, secret)
    cluster.start("d1")
    first, epoch = cluster.leader()
    cluster.start("d2")
    lead = cluster.members[first]
    lead.wait_state("Command/stamp", "InSync")  # ran, and its run recorded
    assert cluster.stamps() == [(first, epoch)]
    records = cluster.server.sql(
        "SELECT shard, epoch FROM reconciler_runs", dbname=cluster.database
    )
    assert records == [("default", epoch)]
    assert not (cluster.daemons.workdir / f"state-{first}" / "command").exists()
    for name in cluster.members:
        if name != first:
            cluster.standby(name)

    _, old, new, new_epoch = cluster.takeover("kill")
    leader = cluster.members[new]
    # the new leader's first pass, as after a start, has ended: the Command found done
    leader.wait_until(
        lambda: "converged: 2 unchanged" in leader.logs(), "the new leader's first pass"
    )
    leader.wait_state("Command/stamp", "InSync", timeout=0.5)
    assert cluster.stamps() == [(first, epoch)], "the new leader ran the Command again"
    cluster.standby(old)  # back, and a standby: it ran nothing either
    assert cluster.stamps() == [(first, epoch)]

    # a changed spec runs once, under the new epoch, and is recorded at it
    write(cluster, 2, secret)
    leader.wait_until(lambda: len(cluster.stamps()) == 2, "the changed Command to run")
    leader.wait_state("Command/stamp", "InSync")
    assert cluster.stamps() == [(first, epoch), (new, new_epoch)]
    records = cluster.server.sql(
        "SELECT epoch FROM reconciler_runs ORDER BY epoch", dbname=cluster.database
    )
    assert records == [(epoch,), (new_epoch,)]
