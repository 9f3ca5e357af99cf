"""Where the wall time of one `reconciler apply` goes, phase by phase.

Converges a tree for N, then runs apply (no-op by default, or drift repair) in a
child that wraps the CLI's internal steps with timers and counts the time spent
in the cyclic garbage collector (gc.callbacks). No profiler overhead, so the
figures add up to the real wall time. Relies on private names of reconciler.cli
(_registry, _load, _store, _run; in cli.py or the package's modules): a missing
one is reported as not measured.

    .venv/bin/python bench/phases.py --size 10000 [--scenario drift-repair] [--rev HEAD]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run
import workload

CHILD = r"""
import gc, json, sys, time
T0, T0_EPOCH = time.perf_counter(), time.time()
phases = {}
gc_time = [0.0, 0]
_gc_started = [0.0]

def _gc(phase, info):
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        gc_time[0] += time.perf_counter() - _gc_started[0]
        gc_time[1] += info["generation"] == 2

gc.callbacks.append(_gc)
if GC_OFF:
    gc.disable()
import click
import reconciler.cli as cli
phases["import cli"] = time.perf_counter() - T0
t = time.perf_counter()
import reconciler.diff, reconciler.engine, reconciler.manifests, reconciler.store
phases["import engine, loader, store (lazy in cli)"] = time.perf_counter() - t

def timed(name, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
    return wrapper

from contextlib import contextmanager
missing = []
# a helper is looked up in the module of its caller: reconciler/cli.py, or (since
# the cli is a package) reconciler.cli.common and reconciler.cli.oneshot
holders = [module for name, module in sorted(sys.modules.items())
           if name == "reconciler.cli" or name.startswith("reconciler.cli.")]

def replace(name, make):
    found = [module for module in holders if hasattr(module, name)]
    if not found:
        missing.append(name)
        return
    wrapped = make(getattr(found[0], name))
    for module in found:
        setattr(module, name, wrapped)

for name, label in (("_registry", "registry (entry points)"), ("_load", "load manifests"),
                    ("_run", "engine (asyncio.run)")):
    replace(name, lambda fn, label=label: timed(label, fn))

def timed_store(original_store):
    @contextmanager
    def store(*args, **kwargs):
        t = time.perf_counter()
        manager = original_store(*args, **kwargs)
        value = manager.__enter__()
        phases["store open"] = time.perf_counter() - t
        try:
            yield value
        finally:
            t = time.perf_counter()
            manager.__exit__(*sys.exc_info())
            phases["store close (flush)"] = time.perf_counter() - t
    return store

replace("_store", timed_store)
click.echo = timed("output (JSON report)", click.echo)
json.dumps = timed("output (JSON report)", json.dumps)
from reconciler.store import SqliteStore
SqliteStore.inventory = timed("store inventory", SqliteStore.inventory)
sys.argv[0] = "reconciler"
code = 0
try:
    # the group, not cli.main(): under main() a one-shot command ends its process
    # with os._exit, before this child could report; here it raises SystemExit
    cli.cli.main(prog_name="reconciler")
except SystemExit as exc:
    code = exc.code
total = time.perf_counter() - T0
with open(OUT, "w") as handle:
    json.dump({"phases": phases, "gc": gc_time[0], "gc_full": gc_time[1], "total": total,
               "start_epoch": T0_EPOCH, "end_epoch": time.time(), "missing": missing,
               "code": code}, handle)
if FAST_EXIT:
    sys.stdout.flush()
    sys.stderr.flush()
    import os
    os._exit(code or 0)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument(
        "--scenario", choices=("no-op", "edited-no-op", "drift-repair"), default="no-op"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gc-off", action="store_true", help="run the child with gc.disable()")
    parser.add_argument(
        "--fast-exit", action="store_true", help="end the child with os._exit (no teardown)"
    )
    parser.add_argument("--rev", help="measure reconciler/ as committed at this revision")
    args = parser.parse_args(argv)
    if args.rev is not None:
        args.rev = run.resolve_rev(args.rev)
    n = args.size
    work = Path(tempfile.mkdtemp(prefix="reconciler-phases-")).resolve()
    try:
        src = run.export_snapshot(args.rev, work / "src") if args.rev else None
        env = run.clean_env(src)
        manifests, root, state = work / "manifests", work / "root", work / "state"
        run.fresh_dir(root)
        workload.write_manifests(root, n, manifests)
        run.run_apply(manifests, root, state, env, work / "logs")
        workload.verify(root, n)
        child = work / "child.py"
        out = work / "phases.json"
        child.write_text(
            f"GC_OFF = {args.gc_off}\nFAST_EXIT = {args.fast_exit}\nOUT = {str(out)!r}\n" + CHILD
        )
        cmd = [str(run.VENV_BIN / "python"), str(child)]
        cmd += run.apply_command(manifests, root, state)[1:]
        samples = []
        for _ in range(args.repeat):
            if args.scenario == "drift-repair":
                workload.drift(root, n)
            if args.scenario == "edited-no-op":  # a new tree digest, the same resources
                with open(sorted(manifests.glob("*.yaml"))[0], "a") as handle:
                    handle.write(f"# bench edit {len(samples)}\n")
            spawned = time.time()
            wall, cpu, rss, _ = run.timed(cmd, env, work / "logs" / "child")
            reaped = time.time()
            workload.verify(root, n)
            data = json.loads(out.read_text())
            data.update(
                wall=wall,
                cpu=cpu,
                rss=rss,
                startup=data["start_epoch"] - spawned,
                exit=reaped - data["end_epoch"],
            )
            samples.append(data)
        print(
            report(
                samples,
                n,
                args.scenario,
                args.gc_off,
                args.fast_exit,
                run.source_description(args.rev),
            )
        )
    finally:
        if os.environ.get("BENCH_KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(
    samples: list[dict[str, Any]], n: int, scenario: str, gc_off: bool, fast_exit: bool, src: str
) -> str:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(get(s) for s in samples)

    gc_note = "".join(
        note for flag, note in ((gc_off, ", gc disabled"), (fast_exit, ", os._exit")) if flag
    )
    lines = [
        f"N={n:,} {scenario}{gc_note}, median of {len(samples)} ({src})",
        "",
        "| phase | seconds |",
        "|---|---:|",
        f"| interpreter start, site | {med(lambda s: s['startup']):.3f} |",
    ]
    for name in samples[0]["phases"]:
        lines.append(f"| {name} | {med(lambda s, k=name: s['phases'].get(k, 0.0)):.3f} |")
    other = med(lambda s: s["total"] - sum(s["phases"].values()))
    lines += [
        f"| other in-process (click, asyncio setup, ...) | {other:.3f} |",
        f"| interpreter exit (teardown) | {med(lambda s: s['exit']):.3f} |",
        f"| **wall** | **{med(lambda s: s['wall']):.3f}** |",
        "",
        f"cyclic GC: {med(lambda s: s['gc']):.3f} s in total across phases "
        f"({med(lambda s: s['gc_full']):.0f} full collections); "
        f"CPU {med(lambda s: s['cpu']):.3f} s; peak RSS {med(lambda s: s['rss']):.0f} MB",
    ]
    if samples[0]["missing"]:
        lines.append(f"not measured (not found in reconciler.cli): {samples[0]['missing']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
