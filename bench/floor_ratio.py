"""The no-op pass against the floor, side by side in one run.

`../shared/bench/floor.py` is a naive sequential converge of the same workload
(PyYAML's C loader, stat/read/compare/write, a JSON inventory; no validation and
no safety). Both converge the workload of N resources once, each into its own
root; then their no-op runs alternate (reconciler, floor, reconciler, ...) so
that load on the machine falls on both alike, and the figure is the ratio of
the median wall times.

    .venv/bin/python bench/floor_ratio.py [--n 1000] [--repeat 11] [--first]

The no-op runs the reconciler twice per round: as users run it (answered by the
no-op record after the first, decision 0131) and with --full-check (the engine).
--first compares first applies into empty roots with the floor's --fsync.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {child.returncode}")
    PEAK_MB[tuple(argv)] = max(PEAK_MB.get(tuple(argv), 0.0), usage.ru_maxrss / 1000)
    return wall


PEAK_MB: dict[tuple[str, ...], float] = {}
"""The largest peak RSS of each command line (ru_maxrss of the child, MB)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument(
        "--first",
        action="store_true",
        help="first applies into empty roots instead of no-ops, against floor --fsync",
    )
    args = parser.parse_args()
    if not FLOOR.is_file():
        raise SystemExit(f"the floor script is not at {FLOOR}")
    env = clean_env(None)
    python = str(VENV_BIN / "python")
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="floor-ratio-") as tmp:
        base = Path(tmp)
        ours, floors = base / "ours", base / "floor"
        write_manifests(ours / "root", args.n, ours / "manifests")
        write_manifests(floors / "root", args.n, floors / "manifests")
        reconcile = apply_command(ours / "manifests", ours / "root", ours / "state")
        floor = [python, str(FLOOR), str(floors / "manifests"), str(floors / "state.json")]
        if args.first:
            floor.append("--fsync")
            runs = {"reconciler": reconcile, "floor --fsync": floor}
            for _ in range(args.repeat):
                for name, argv in runs.items():
                    for gone in (ours / "root", ours / "state", floors / "root"):
                        shutil.rmtree(gone, ignore_errors=True)
                    (floors / "state.json").unlink(missing_ok=True)
                    (ours / "root").mkdir()
                    (floors / "root").mkdir()
                    times.setdefault(name, []).append(_wall(argv, env))
        else:
            (ours / "root").mkdir()
            (floors / "root").mkdir()  # the floor creates nothing above its objects
            _wall(reconcile, env)  # the first converge of each: not measured
            _wall(floor, env)
            # the no-op record is written by the first no-op and answers the next
            # ones; --full-check runs the engine every time (decision 0131)
            runs = {
                "reconciler": reconcile,
                "reconciler --full-check": [*reconcile, "--full-check"],
                "floor": floor,
            }
            _wall(reconcile, env)
            for _ in range(args.repeat):
                for name, argv in runs.items():
                    times.setdefault(name, []).append(_wall(argv, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    what = "first applies" if args.first else "no-op runs"
    print(f"N={args.n}, {args.repeat} alternating {what} each, wall seconds")
    for name, values in times.items():
        print(
            f"  {name:<24} median {medians[name]:.3f}  min {min(values):.3f}  "
            f"max {max(values):.3f}  peak RSS {PEAK_MB.get(tuple(runs[name]), 0):.0f} MB"
        )
    floor_name = "floor --fsync" if args.first else "floor"
    for name in medians:
        if name != floor_name:
            print(f"  {name}: {medians[name] / medians[floor_name]:.2f}x the {floor_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
