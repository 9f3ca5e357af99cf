"""Profile one `reconciler apply` of the benchmark workload with cProfile.

Converges a tree for N, then profiles a no-op (default) or a drift repair or a
first apply, writing the .prof file to bench/results/ and printing the top
functions by cumulative and by own time.

    .venv/bin/python bench/profile_apply.py --size 1000 [--scenario no-op] [--rev HEAD]
"""

from __future__ import annotations

import argparse
import pstats
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run
import workload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument(
        "--scenario",
        choices=("first-apply", "no-op", "edited-no-op", "drift-repair"),
        default="no-op",
    )
    parser.add_argument("--rev", help="profile reconciler/ as committed at this revision")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--out", type=Path, default=run.RESULTS)
    args = parser.parse_args(argv)
    if args.rev is not None:
        args.rev = run.resolve_rev(args.rev)
    n = args.size
    work = Path(tempfile.mkdtemp(prefix="reconciler-profile-")).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    prof = (args.out / f"profile-{args.scenario}-{n}.prof").resolve()
    try:
        src = run.export_snapshot(args.rev, work / "src") if args.rev else None
        env = run.clean_env(src)
        manifests, root, state = work / "manifests", work / "root", work / "state"
        run.fresh_dir(root)
        workload.write_manifests(root, n, manifests)
        if args.scenario != "first-apply":
            run.run_apply(manifests, root, state, env, work / "logs")
            workload.verify(root, n)
            if args.scenario == "drift-repair":
                workload.drift(root, n)
            if args.scenario == "edited-no-op":  # a new tree digest, the same resources
                with open(sorted(manifests.glob("*.yaml"))[0], "a") as handle:
                    handle.write("# bench edit\n")
        cmd = [str(run.VENV_BIN / "python"), "-m", "cProfile", "-o", str(prof)]
        cmd += ["-m", "reconciler", *run.apply_command(manifests, root, state)[1:]]
        wall, cpu, rss, _ = run.timed(cmd, env, work / "logs" / "profile")
        workload.verify(root, n)
        print(
            f"N={n} {args.scenario} under cProfile ({run.source_description(args.rev)}): "
            f"wall {wall:.3f} s, cpu {cpu:.3f} s, RSS {rss:.0f} MB; profile in {prof}"
        )
        stats = pstats.Stats(str(prof))
        stats.strip_dirs()
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
    except subprocess.CalledProcessError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
