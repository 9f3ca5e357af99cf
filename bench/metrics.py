"""The /metrics scrape at 10,000 resources, in process: how long rendering takes
and how big the exposition is (target: a scrape in at most 200 ms).

    python bench/metrics.py [--n 10000] [--repeat 20]

bench/daemon.py measures the same over HTTP against the real daemon.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from reconciler.fsm import State
from reconciler.metrics import PHASES, Metrics, Snapshot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    kinds = ("File", "Directory", "Symlink")
    resources = {
        f"{kinds[i % 3]}/bench-resource-{i:05d}": State.DRIFTED if i % 97 == 0 else State.IN_SYNC
        for i in range(args.n)
    }
    snapshot = Snapshot(
        resources=resources,
        revision="3f2a9c1d0e",
        last_fetch_success=time.time(),
        interval=60.0,
        last_converged=time.time(),
    )
    metrics = Metrics(lambda: snapshot, version="bench")
    for kind in kinds:  # every counter and histogram series a busy daemon has
        for phase in PHASES:
            metrics.phase(kind, phase, 0.01, 3)
        metrics.applied(kind, True)
        metrics.applied(kind, False)
        metrics.drifted(kind)
        metrics.pruned(kind)
        states = [s.value for s in State]
        metrics.transitions({(kind, a, b): 1 for a in states for b in states})
    started = time.perf_counter()
    metrics.render(snapshot)
    cold = time.perf_counter() - started
    times, size = [], 0
    for k in range(args.repeat):
        # a pass between two scrapes changed the state of 1% of the resources
        changed = dict(resources)
        for i in range(k, args.n, 100):
            key = f"{kinds[i % 3]}/bench-resource-{i:05d}"
            changed[key] = State.DRIFTED if changed[key] is State.IN_SYNC else State.IN_SYNC
        snapshot = dataclasses.replace(snapshot, resources=changed)
        started = time.perf_counter()
        body = metrics.render(snapshot)
        times.append(time.perf_counter() - started)
        size = len(body)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(
        f"N={args.n}: first render {cold * 1000:.1f} ms; then, with 1% of the states changed "
        f"between scrapes, p50 {statistics.median(times) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {times[-1] * 1000:.1f} ms (target <= 200 ms); {size:,} bytes "
        f"({size / 1024 / 1024:.2f} MiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
