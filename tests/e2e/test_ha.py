"""High availability end to end: three real daemons on one PostgreSQL store.

The leader is failed in turn by SIGKILL, SIGSTOP and its database sessions cut
(its role may not log in, its sessions terminated); each time another daemon
leads within 15 s at a higher epoch, a Command of a new revision stamps the log
with "$RECONCILER_DAEMON_ID $RECONCILER_EPOCH" under the new leader only, and a
SIGSTOPped leader, resumed, steps down without applying. Standbys answer
/readyz, /metrics and the read API, and send syncs and webhooks to the leader.
At the end the tree and the store are as desired and no two epochs overlap.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.daemon_harness import hmac_signature
from tests.e2e.ha_cluster import Cluster, status

pytestmark = pytest.mark.timeout(300)

TAKEOVER_LIMIT = 15.0


def assert_no_overlap(stamps: list[tuple[str, int]]) -> None:
    """Epochs never go back, and each epoch stamps under one daemon only."""
    epochs = [epoch for _, epoch in stamps]
    assert epochs == sorted(epochs), stamps
    holders: dict[int, set[str]] = {}
    for who, epoch in stamps:
        holders.setdefault(epoch, set()).add(who)
    assert all(len(who) == 1 for who in holders.values()), holders


def check_standby(cluster: Cluster, name: str, leader: str) -> None:
    """A standby's probes, metrics, read API, and its forwarding of writes."""
    daemon, lead = cluster.members[name], cluster.members[leader]
    daemon.wait_until(
        lambda: (ha := status(daemon)) is not None and ha["leader"]["id"] == leader,
        f"{name} to know {leader} leads",
    )
    ready = daemon.request("GET", "/readyz")
    assert (ready.status, ready.body) == (200, b"ready: standby")
    metrics = daemon.request("GET", "/metrics").body.decode()
    assert re.search(r"^reconciler_leader 0\.0$", metrics, re.M), metrics[:2000]
    assert 'reconciler_role{role="standby"} 1.0' in metrics
    daemon.wait_until(
        lambda: {r["id"] for r in daemon.resources()} >= {"File/a", "File/trial"},
        "the standby's read API to show the store's resources",
    )
    sync = daemon.sync()
    assert sync.status == 307, sync
    assert sync.headers["Location"] == f"{lead.url}/api/v1/sync"
    body = b'{"ref": "refs/heads/main"}'
    hook = daemon.hook(
        "generic", body, {"X-Signature-256": hmac_signature(daemon.webhook_secret or "", body)}
    )
    assert hook.status == 307 and hook.headers["Location"] == f"{lead.url}/hooks/generic"
    assert hook.json()["leader"] == leader
    # what the standby forwards, the leader takes
    assert lead.sync().status == 202


def test_takeover_after_kill_stop_and_lost_session(cluster: Cluster) -> None:
    cluster.write(0)
    cluster.start("d1")
    first, epoch = cluster.leader()
    cluster.start("d2")
    cluster.start("d3")
    lead = cluster.members[first]
    lead.wait_file(cluster.root / "stamped-0", "")
    assert cluster.stamps() == [(first, epoch)]
    for name in cluster.members:
        if name != first:
            cluster.standby(name)
            check_standby(cluster, name, first)

    trial = 0
    timings: dict[str, list[float]] = {}
    for how in ("kill", "stop", "session", "kill", "stop", "session"):
        trial += 1
        before = len(cluster.stamps())
        seconds, old, new, new_epoch = cluster.takeover(how)
        timings.setdefault(how, []).append(seconds)
        assert seconds < TAKEOVER_LIMIT, f"takeover after {how} took {seconds:.1f} s"
        leader = cluster.members[new]
        # a new revision: stamped once, by the new leader at its epoch
        cluster.write(trial)
        leader.wait_until(
            lambda t=trial: (cluster.root / f"stamped-{t}").exists(), f"trial {trial}'s stamp"
        )
        assert cluster.stamps()[before:] == [(new, new_epoch)], cluster.stamps()
        # the failed leader is back as a standby, having applied nothing
        cluster.standby(old)
        if how == "stop":
            log = cluster.members[old].logs()
            assert "stepping down from epoch" in log, cluster.members[old].log_tail()
        assert_no_overlap(cluster.stamps())
    print("takeover seconds:", {k: [round(s, 2) for s in v] for k, v in timings.items()})

    final, epoch = cluster.leader()
    for name in cluster.members:
        if name != final:
            check_standby(cluster, name, final)
    lead = cluster.members[final]
    assert (cluster.root / "a.txt").read_text() == "alpha\n"
    assert (cluster.root / "trial.txt").read_text() == f"{trial}\n"
    lead.wait_until(
        lambda: (
            {r["id"]: r["state"] for r in lead.resources()}
            == {"File/a": "InSync", "File/trial": "InSync", f"Command/stamp-{trial}": "InSync"}
        ),
        "the store to hold the last revision, in sync",
    )
    stored = cluster.server.sql(
        "SELECT epoch FROM reconciler_lease WHERE shard = 'default'", dbname=cluster.database
    )
    assert stored == [(epoch,)]
    # a clean stop releases the lease: a standby takes over at once
    lead.stop()
    cluster.stopped.add(final)
    cluster.leader(above=epoch, timeout=10.0)
