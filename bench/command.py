"""The Command benchmark of issue 9: a no-op pass over 1,000 guarded commands
whose guards say "done", through the real `reconciler apply` process.

Two variants: `creates` (a path that exists: one lstat per command) and
`unless: [true]` (a guard command: one process per command, at most 32 at once).
Each variant: a first apply (the guards already say done, so nothing runs and
every command is recorded in sync), then --repeat no-op passes; the figures are
the engine time of the report (the target: at most 3 s) and the wall time of the
whole process, median and range. A counter file proves no command ran.

    .venv/bin/python bench/command.py [--n 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Run, clean_env, run_apply

LIMIT = 3.0
"""Seconds of engine time a no-op pass may take (issue 9)."""
PER_FILE = 100


def manifests(config: Path, root: Path, n: int, variant: str) -> None:
    counter = root / "counter"
    for start in range(0, n, PER_FILE):
        documents = []
        for i in range(start, min(n, start + PER_FILE)):
            spec: dict[str, object] = {"argv": ["sh", "-c", f"echo {i} >> {counter}"]}
            if variant == "creates":
                done = root / f"done-{i}"
                done.touch()
                spec["creates"] = str(done)
            else:
                spec["unless"] = ["true"]
            documents.append(
                {
                    "apiVersion": "reconciler/v1",
                    "kind": "Command",
                    "metadata": {"name": f"cmd-{i}"},
                    "spec": spec,
                }
            )
        text = yaml.safe_dump_all(documents, sort_keys=False)
        (config / f"commands-{start // PER_FILE:03d}.yaml").write_text(text)


def bench(variant: str, n: int, repeat: int, work: Path) -> list[Run]:
    base = work / variant
    config, root, state, logs = base / "config", base / "root", base / "state", base / "logs"
    for path in (config, root, logs):
        path.mkdir(parents=True)
    manifests(config, root, n, variant)
    env = clean_env(None)
    env["RECONCILER_ALLOW_COMMANDS"] = "1"  # the operator's opt-in
    first = run_apply(config, root, state, env, logs)
    if first.counts.get("unchanged", 0) != n:
        raise SystemExit(f"{variant}: first apply counts {first.counts}, expected {n} unchanged")
    runs = []
    for _ in range(repeat):
        run = run_apply(config, root, state, env, logs)
        if run.counts.get("unchanged", 0) != n:
            raise SystemExit(f"{variant}: no-op counts {run.counts}")
        runs.append(run)
    if (root / "counter").exists():
        raise SystemExit(f"{variant}: a command ran: {(root / 'counter').read_text()[:200]}")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-command-"))
    ok = True
    try:
        print("| variant | N | engine s, median (min-max) | wall s, median | limit (engine) |")
        print("|---|---|---|---|---|")
        for variant in ("creates", "unless"):
            runs = bench(variant, args.n, max(1, args.repeat), work)
            engine = [r.engine for r in runs]
            wall = [r.wall for r in runs]
            median = statistics.median(engine)
            verdict = "ok" if median <= LIMIT else "OVER"
            ok = ok and median <= LIMIT
            print(
                f"| {variant} | {args.n} | {median:.3f} ({min(engine):.3f}-{max(engine):.3f}) "
                f"| {statistics.median(wall):.3f} | {LIMIT:g} s {verdict} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
