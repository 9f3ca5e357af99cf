"""The no-op pass against the floor, side by side in one run.

`../shared/bench/floor.py` is a naive sequential converge of the same workload
(PyYAML's C loader, stat/read/compare/write, a JSON inventory; no validation and
no safety). Both converge the workload of N resources once, each into its own
root; then their no-op runs alternate (reconciler, floor, reconciler, ...) so
that load on the machine falls on both alike, and the figure is the ratio of
the median wall times.

    .venv/bin/python bench/floor_ratio.py [--n 1000] [--repeat 11]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import VENV_BIN, apply_command, clean_env  # noqa: E402
from workload import write_manifests  # noqa: E402

FLOOR = BENCH.parent.parent / "shared" / "bench" / "floor.py"


def _wall(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    if not FLOOR.is_file():
        raise SystemExit(f"the floor script is not at {FLOOR}")
    env = clean_env(None)
    python = str(VENV_BIN / "python")
    with tempfile.TemporaryDirectory(prefix="floor-ratio-") as tmp:
        base = Path(tmp)
        ours, floors = base / "ours", base / "floor"
        write_manifests(ours / "root", args.n, ours / "manifests")
        write_manifests(floors / "root", args.n, floors / "manifests")
        (ours / "root").mkdir()
        (floors / "root").mkdir()  # the floor creates nothing above its objects
        reconcile = apply_command(ours / "manifests", ours / "root", ours / "state")
        floor = [python, str(FLOOR), str(floors / "manifests"), str(floors / "state.json")]
        _wall(reconcile, env)  # the first converge of each: not measured
        _wall(floor, env)
        times: dict[str, list[float]] = {"reconciler": [], "floor": []}
        for _ in range(args.repeat):
            times["reconciler"].append(_wall(reconcile, env))
            times["floor"].append(_wall(floor, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["reconciler"] / medians["floor"]
    print(f"N={args.n}, {args.repeat} alternating no-op runs each, wall seconds")
    for name, values in times.items():
        print(
            f"  {name:<10} median {medians[name]:.3f}  min {min(values):.3f}  max {max(values):.3f}"
        )
    print(f"  ratio of medians: {ratio:.2f}x the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
