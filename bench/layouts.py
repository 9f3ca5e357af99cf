"""Which grouping of the workload's manifests loads fastest?

Converges one tree for N, then runs no-op applies with the same resources
written as one YAML file per directory (12 documents each), one per 100
directories (1,200 each) and one single file, and reports the report's load time
and the whole-process wall time (medians). Before each run a comment is appended
to one manifest, so the tree is parsed every time (no cache of validated trees hit).

    .venv/bin/python bench/layouts.py --size 10000 [--repeat 5] [--rev HEAD]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run
import workload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rev", help="benchmark reconciler/ as committed at this revision")
    args = parser.parse_args(argv)
    if args.rev is not None:
        args.rev = run.resolve_rev(args.rev)
    n = args.size
    work = Path(tempfile.mkdtemp(prefix="reconciler-layouts-")).resolve()
    try:
        src = run.export_snapshot(args.rev, work / "src") if args.rev else None
        env = run.clean_env(src)
        root, state = work / "root", work / "state"
        run.fresh_dir(root)
        for layout in workload.LAYOUTS:
            workload.write_manifests(root, n, work / layout, layout)
        first = workload.LAYOUTS[0]
        run.run_apply(work / first, root, state, env, work / "logs")
        workload.verify(root, n)
        print(f"N={n}, {args.repeat} no-op runs per layout ({run.source_description(args.rev)})")
        print("| layout | files | load s (median) | wall s (median) |")
        print("|---|---:|---:|---:|")
        for layout in workload.LAYOUTS:
            runs = []
            first_file = sorted((work / layout).glob("*.yaml"))[0]
            for k in range(args.repeat):
                # a new tree digest each run, so a cache of validated trees cannot answer
                with open(first_file, "a", encoding="ascii") as handle:
                    handle.write(f"# bench edit {k}\n")
                result = run.run_apply(work / layout, root, state, env, work / "logs")
                run.check_report(n, "no-op", result)
                runs.append(result)
            workload.verify(root, n)
            files = len(list((work / layout).glob("*.yaml")))
            load = statistics.median(r.load for r in runs)
            wall = statistics.median(r.wall for r in runs)
            print(f"| {layout} | {files} | {load:.3f} | {wall:.3f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
