"""Takeover trials (issue 13): three real daemons on one PostgreSQL store, the
leader failed N times each by SIGKILL, SIGSTOP and its database sessions cut;
prints the takeover time p50/p95 per failure and checks after each trial that a
new revision is stamped by the new leader only (no two epochs overlap).

    .venv/bin/python bench/ha.py [--trials 10] [--lease 10s]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import _p

from tests.e2e.daemon_harness import Daemons
from tests.e2e.ha_cluster import Cluster
from tests.e2e.test_ha import assert_no_overlap
from tests.postgres import start_server, stop_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--lease", default="10s")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="reconciler-ha-"))
    server = start_server(Path(tempfile.mkdtemp(prefix="reconciler-pg-")))
    try:
        (base / "root").mkdir()
        (base / "config").mkdir()
        with Daemons(base / "daemons") as daemons:
            cluster = Cluster(server, daemons, base / "root", base / "config", lease=args.lease)
            try:
                cluster.write(0)
                for name in ("d1", "d2", "d3"):
                    cluster.start(name)
                timings: dict[str, list[float]] = {"kill": [], "stop": [], "session": []}
                trial = 0
                for _ in range(args.trials):
                    for how in timings:
                        trial += 1
                        before = len(cluster.stamps())
                        seconds, old, new, epoch = cluster.takeover(how)
                        timings[how].append(seconds)
                        cluster.write(trial)
                        leader = cluster.members[new]
                        leader.wait_until(
                            lambda t=trial: (cluster.root / f"stamped-{t}").exists(),
                            f"trial {trial}'s stamp",
                        )
                        assert cluster.stamps()[before:] == [(new, epoch)], cluster.stamps()
                        cluster.standby(old)
                        assert_no_overlap(cluster.stamps())
                        print(f"{how:8} {old} -> {new} epoch {epoch}: {seconds:.2f} s", flush=True)
            finally:
                cluster.close()
        print(f"\nlease {args.lease}, {args.trials} trials each:")
        for how, values in timings.items():
            print(
                f"  {how:8} p50 {statistics.median(values):.2f} s  p95 {_p(values, 0.95):.2f} s"
                f"  max {max(values):.2f} s"
            )
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
