"""The filesystem benchmark of /work/shared/BENCH.md for `reconciler apply`.

For every N: first apply onto an empty root, no-op, drift repair; each the median
of --repeat runs (at least 3) of the whole `reconciler apply` process, with the
engine and load times of its JSON report and the peak RSS of the child (from
os.wait4). Every run ends with `workload.verify` and a check of the report's
counts. Prints a Markdown table with the targets of the issue and writes it to
bench/results/latest.md (raw figures in bench/results/latest.json).

    .venv/bin/python bench/run.py --sizes 1000 10000 [--repeat 3]
    .venv/bin/python bench/run.py --rev HEAD   # a committed snapshot, not the work tree
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload

from reconciler.diff import REPORT_ORDER

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
VENV_BIN = REPO / ".venv" / "bin"
EDITED = "no-op, edited tree"
SCENARIOS = ("first apply", "no-op", EDITED, "drift repair")
"""BENCH.md's three, plus a supplementary one: a no-op after a commit that changed
the text of one manifest but no resource (a comment), so a cache of validated
config trees keyed by the tree's digest misses and the whole tree is parsed."""

# (N, scenario, metric, limit, unit); metrics: wall, engine (medians), rss (max of runs)
TARGETS: tuple[tuple[int, str, str, float, str], ...] = (
    (1000, "no-op", "wall", 0.6, "s"),
    (1000, "no-op", "engine", 0.1, "s"),
    (1000, "first apply", "wall", 1.0, "s"),
    (10000, "no-op", "wall", 2.5, "s"),
    (10000, "no-op", "rss", 300.0, "MB"),
)


class BenchError(RuntimeError):
    pass


@dataclass
class Run:
    wall: float
    engine: float
    load: float
    rss_mb: float
    """Peak RSS of the child in MB (10^6 bytes): ru_maxrss is KiB on Linux."""
    counts: dict[str, int]
    cpu: float = 0.0
    """User + system CPU seconds of the child: less sensitive than wall time to
    other load on the machine."""
    changed: dict[str, str] = field(default_factory=dict, repr=False)
    """Action of every resource the report lists (all but the unchanged ones)."""


@dataclass
class Scenario:
    n: int
    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self, metric: str) -> float:
        return statistics.median(getattr(r, metric) for r in self.runs)

    def span(self, metric: str) -> tuple[float, float]:
        values = [getattr(r, metric) for r in self.runs]
        return min(values), max(values)

    def value(self, metric: str) -> float:
        """The figure a target is checked against: medians of times, max of RSS."""
        return self.span("rss_mb")[1] if metric == "rss" else self.median(metric)


# running the command


def clean_env(src: Path | None) -> dict[str, str]:
    """The environment of the child: no RECONCILER_* settings leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.pop("PYTHONPATH", None)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def apply_command(manifests: Path, root: Path, state: Path) -> list[str]:
    return [
        str(VENV_BIN / "reconciler"),
        "apply",
        str(manifests),
        "--root",
        str(root),
        "--state-dir",
        str(state),
        "--json",
        "--no-progress",
    ]


def timed(cmd: list[str], env: dict[str, str], log_dir: Path) -> tuple[float, float, float, bytes]:
    """Run `cmd`; return (wall seconds, CPU seconds, peak RSS MB, stdout).

    Output goes to files (a large JSON report cannot fill a pipe), and the child
    is reaped with os.wait4, whose rusage is the child's own."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.json", log_dir / "stderr.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        # cwd outside the repository: `python -m reconciler` puts the cwd first on
        # sys.path, which would import the work tree instead of a --rev snapshot
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL, cwd=log_dir
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_bytes()
    if code != 0:
        raise BenchError(
            f"{' '.join(cmd)} exited {code}:\n{err_path.read_text(errors='replace')[-3000:]}"
            f"\n{stdout.decode(errors='replace')[-2000:]}"
        )
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / 1e6, stdout


def run_apply(manifests: Path, root: Path, state: Path, env: dict[str, str], log: Path) -> Run:
    wall, cpu, rss, stdout = timed(apply_command(manifests, root, state), env, log)
    try:
        report = json.loads(stdout)
        timings = report["timings"]
        counts = {k: int(report["counts"].get(k, 0)) for k in REPORT_ORDER}
        changed = {r["id"]: r["action"] for r in report.get("results", [])}
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"unexpected report ({exc}): {stdout[:500]!r}") from exc
    if not report.get("ok"):
        raise BenchError(f"report not ok: {stdout[:2000]!r}")
    return Run(wall, float(timings["engine"]), float(timings["load"]), rss, counts, cpu, changed)


DELETED_FILE_ACTIONS = ("healed", "created")
"""How a deleted file whose spec did not change is reported: `healed` since
docs/decisions/0014-missing-object-is-drift.md, `created` before. Both are accepted;
the table notes which one the measured version used."""


def check_report(n: int, scenario: str, run: Run) -> str | None:
    """Check the report's counts and, for drift repair, the action of every file
    touched out of band. Returns how deleted files were reported (drift repair)."""
    total = n + n // 5
    expected = dict.fromkeys(REPORT_ORDER, 0)
    deleted_as = None
    if scenario == "first apply":
        expected["created"] = total
    elif scenario in ("no-op", EDITED):
        expected["unchanged"] = total
    else:
        rewritten = {f"File/f{i:05d}" for i in workload.rewritten_indices(n)}
        deleted = {f"File/f{i:05d}" for i in workload.deleted_indices(n)}
        wrong = {
            rid: action
            for rid, action in run.changed.items()
            if not (
                (rid in rewritten and action == "healed")
                or (rid in deleted and action in DELETED_FILE_ACTIONS)
            )
        }
        missing = sorted((rewritten | deleted) - set(run.changed))
        if wrong or missing:
            raise BenchError(
                f"N={n} {scenario}: unexpected actions {dict(list(wrong.items())[:10])}, "
                f"not reported: {missing[:10]}"
            )
        labels = {run.changed[rid] for rid in deleted}
        if len(labels) > 1:
            raise BenchError(f"N={n} {scenario}: deleted files reported as {sorted(labels)}")
        deleted_as = labels.pop() if labels else None
        expected["healed"] = len(rewritten) + (len(deleted) if deleted_as == "healed" else 0)
        expected["created"] = len(deleted) if deleted_as == "created" else 0
        expected["unchanged"] = total - len(rewritten) - len(deleted)
    if run.counts != expected:
        wrong_counts = {k: (run.counts[k], v) for k, v in expected.items() if run.counts[k] != v}
        raise BenchError(f"N={n} {scenario}: counts (found, expected) differ: {wrong_counts}")
    return deleted_as


def fresh_dir(path: Path) -> None:
    """An empty directory with mode 0755 (independent of the umask)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    path.chmod(0o755)


# the benchmark


def bench_size(
    n: int, repeat: int, work: Path, env: dict[str, str], layout: str, say: Any, notes: set[str]
) -> dict[str, Scenario]:
    base = work / f"n{n}"
    manifests, root, state = base / "manifests", base / "root", base / "state"
    fresh_dir(base)
    files = workload.write_manifests(root, n, manifests, layout)
    say(f"N={n}: {files} manifest files ({layout}), {n + n // 5} resources")
    results = {name: Scenario(n, name) for name in SCENARIOS}

    def one(scenario: str, k: int) -> None:
        run = run_apply(manifests, root, state, env, base / "logs" / f"{scenario}-{k}")
        workload.verify(root, n)
        deleted_as = check_report(n, scenario, run)
        if deleted_as is not None:
            notes.add(f"drift repair at N={n:,}: deleted files reported as `{deleted_as}`")
        results[scenario].runs.append(run)
        say(
            f"  {scenario:<12} run {k + 1}: wall {run.wall:.3f} s, cpu {run.cpu:.3f} s, "
            f"engine {run.engine:.3f} s, "
            f"load {run.load:.3f} s, RSS {run.rss_mb:.0f} MB"
        )

    for k in range(repeat):
        fresh_dir(root)
        if state.exists():
            shutil.rmtree(state)
        one("first apply", k)
    # the tree and state of the last first apply are converged: reuse them
    for k in range(repeat):
        one("no-op", k)
    first_manifest = sorted(manifests.glob("*.yaml"))[0]
    for k in range(repeat):
        with open(first_manifest, "a", encoding="ascii") as handle:
            handle.write(f"# bench edit {k}\n")
        one(EDITED, k)
    for k in range(repeat):
        workload.drift(root, n)
        one("drift repair", k)
    return results


def warm_up(work: Path, env: dict[str, str]) -> None:
    """One untimed small apply, so .pyc files and the page cache are warm."""
    base = work / "warmup"
    fresh_dir(base)
    fresh_dir(base / "root")
    workload.write_manifests(base / "root", 10, base / "manifests")
    run_apply(base / "manifests", base / "root", base / "state", env, base / "logs")
    workload.verify(base / "root", 10)


def startup_figures(env: dict[str, str], work: Path, repeat: int = 5) -> dict[str, float]:
    """Wall time of a bare interpreter and of `reconciler version` (CLI imports only)."""
    python = str(VENV_BIN / "python")
    figures = {}
    for label, cmd in (
        ("python -c pass", [python, "-c", "pass"]),
        ("reconciler version", [str(VENV_BIN / "reconciler"), "version"]),
    ):
        walls = [timed(cmd, env, work / "logs" / "startup")[0] for _ in range(repeat)]
        figures[label] = statistics.median(walls)
    return figures


def import_times(manifests: Path, root: Path, state: Path, env: dict[str, str]) -> dict[str, Any]:
    """`python -X importtime` of one apply: total and the biggest top-level imports."""
    cmd = [str(VENV_BIN / "python"), "-X", "importtime", "-m", "reconciler"]
    cmd += apply_command(manifests, root, state)[1:]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=False, cwd=state.parent
    )
    if proc.returncode != 0:
        raise BenchError(f"importtime run failed: {proc.stderr[-2000:]}")
    top: list[tuple[str, int]] = []
    for line in proc.stderr.splitlines():
        # "import time: <self us> | <cumulative us> | <two spaces per level><name>"
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, raw = line[len("import time:") :].split("|", 2)
        if raw[1:2] == " ":  # nested import: counted in its parent's cumulative time
            continue
        top.append((raw.strip(), int(cumulative)))
    total = sum(us for _, us in top)
    biggest = sorted(top, key=lambda t: -t[1])[:10]
    return {"total_s": total / 1e6, "top": [(name, us / 1e6) for name, us in biggest]}


# reporting


def fmt_s(value: float) -> str:
    return f"{value:.3f}"


def table(results: dict[int, dict[str, Scenario]]) -> str:
    lines = [
        "| N | scenario | wall s, median (min-max) | engine s | load s | peak RSS MB (max) "
        "| CPU s |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for n, scenarios in results.items():
        for name in SCENARIOS:
            s = scenarios[name]
            lo, hi = s.span("wall")
            lines.append(
                f"| {n:,} | {name} | {fmt_s(s.median('wall'))} ({fmt_s(lo)}-{fmt_s(hi)}) "
                f"| {fmt_s(s.median('engine'))} | {fmt_s(s.median('load'))} "
                f"| {s.median('rss_mb'):.0f} ({s.span('rss_mb')[1]:.0f}) "
                f"| {fmt_s(s.median('cpu'))} |"
            )
    return "\n".join(lines)


def target_rows(results: dict[int, dict[str, Scenario]]) -> tuple[str, list[dict[str, Any]]]:
    lines = ["| target | measured | result |", "|---|---:|---|"]
    rows = []
    for n, scenario, metric, limit, unit in TARGETS:
        label = {"wall": "wall (median)", "engine": "engine (median)", "rss": "peak RSS (max)"}
        what = f"N={n:,} {scenario} {label[metric]} <= {limit:g} {unit}"
        if n not in results:
            lines.append(f"| {what} | not run | - |")
            rows.append({"target": what, "measured": None, "result": "not run"})
            continue
        value = results[n][scenario].value(metric)
        verdict = "PASS" if value <= limit else "FAIL"
        shown = f"{value:.0f} {unit}" if unit == "MB" else f"{value:.3f} {unit}"
        lines.append(f"| {what} | {shown} | **{verdict}** |")
        rows.append({"target": what, "measured": value, "result": verdict})
    return "\n".join(lines), rows


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.system()} {platform.release()}, {cores} cores {model}; load avg {load}"


def source_description(rev: str | None) -> str:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return proc.stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    if rev is not None:
        return f"snapshot of commit {rev[:12]} (git archive, via PYTHONPATH)"
    dirty = git("status", "--porcelain", "--", "reconciler")
    diff = hashlib.sha256(git("diff", "HEAD", "--", "reconciler").encode()).hexdigest()[:8]
    changed = ", ".join(sorted({ln[3:] for ln in dirty.splitlines()}))
    state = f", uncommitted changes (diff {diff}) in: {changed}"
    return f"work tree at {head}{state if dirty else ' (clean)'}"


def compile_source(parent: Path) -> None:
    """Byte-compile reconciler/ under `parent`, as `make install` does: with
    PYTHONDONTWRITEBYTECODE set, it would otherwise be compiled again on every run."""
    subprocess.run(
        [str(VENV_BIN / "python"), "-m", "compileall", "-q", str(parent / "reconciler")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def resolve_rev(rev: str) -> str:
    """The full commit id of `rev`: pinned, as others may commit while a benchmark runs."""
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"error: unknown git revision {rev!r}")
    return proc.stdout.strip()


def export_snapshot(rev: str, dest: Path) -> Path:
    """`git archive` of reconciler/ at `rev` into dest (read-only on the repository)."""
    fresh_dir(dest)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "reconciler"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    compile_source(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (>= 3)")
    parser.add_argument("--layout", choices=workload.LAYOUTS, default=workload.DEFAULT_LAYOUT)
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a new /tmp dir)")
    parser.add_argument(
        "--rev", help="benchmark reconciler/ as committed at this git revision (PYTHONPATH)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--no-importtime", action="store_true", help="skip the import profile")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    if args.repeat < 3:
        parser.error("--repeat must be at least 3 (BENCH.md: median of at least 3 runs)")
    for n in args.sizes:
        if n <= 0 or n % 10:
            parser.error(f"sizes must be positive multiples of 10, found {n}")

    if args.rev is not None:
        args.rev = resolve_rev(args.rev)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="reconciler-bench-"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.rev:
        src = export_snapshot(args.rev, work / "src")
    else:
        src = None
        compile_source(REPO)  # like `make bench`
    env = clean_env(src)
    started = datetime.datetime.now().astimezone()
    host = machine()  # the load average before the benchmark adds its own
    source = source_description(args.rev)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    say(f"scratch: {work}; reconciler: {source}")
    results: dict[int, dict[str, Scenario]] = {}
    extra: dict[str, Any] = {}
    notes: set[str] = set()
    try:
        warm_up(work, env)
        for n in args.sizes:
            results[n] = bench_size(n, args.repeat, work, env, args.layout, say, notes)
        extra["startup"] = startup_figures(env, work)
        if not args.no_importtime:
            n = min(args.sizes)
            base = work / f"n{n}"
            extra["importtime"] = import_times(
                base / "manifests", base / "root", base / "state", env
            )
            extra["importtime"]["run"] = f"N={n:,} no-op"
            workload.verify(base / "root", n)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    targets_md, target_data = target_rows(results)
    if source_description(args.rev) != source:
        source += f" (WARNING: changed during the run, now {source_description(args.rev)})"
    header = (
        f"# reconciler benchmark ({started:%Y-%m-%d %H:%M %Z})\n\n"
        f"- machine: {host} (at start)\n"
        f"- Python {platform.python_version()}; reconciler: {source}\n"
        f"- workload: /work/shared/BENCH.md, manifests `{args.layout}`; "
        f"{args.repeat} runs per scenario; `reconciler apply --json --no-progress`\n"
        "- wall: whole process (perf_counter around the subprocess); engine and load: the "
        "report's `timings`; RSS: the child's ru_maxrss from os.wait4 (MB = 10^6 bytes); "
        "CPU: the child's user + system time (medians)\n"
        f"- `{EDITED}` is supplementary, not in BENCH.md: before each run a comment is "
        "appended to one manifest, so the tree digest changes while no resource does "
        "(a commit that touches no resource; defeats a cache keyed by the tree digest)\n"
        f"- load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
    )
    parts = [header, "## Results\n", table(results)]
    parts += [f"\n- {note}" for note in sorted(notes)]
    parts += ["\n## Targets\n", targets_md]
    if "startup" in extra:
        parts += ["\n## Startup\n", "| command | wall s (median of 5) |", "|---|---:|"]
        parts += [f"| `{k}` | {fmt_s(v)} |" for k, v in extra["startup"].items()]
    if "importtime" in extra:
        imp = extra["importtime"]
        parts += [
            f"\n## Imports (`python -X importtime`, one {imp['run']} run)\n",
            f"Top-level imports total {imp['total_s']:.3f} s (inflated by -X importtime itself).\n",
            "| module | cumulative s |",
            "|---|---:|",
        ]
        parts += [f"| `{name}` | {fmt_s(s)} |" for name, s in imp["top"]]
    text = "\n".join(parts) + "\n"
    print(text)

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    raw = {
        "date": started.isoformat(),
        "machine": host,
        "python": platform.python_version(),
        "source": source,
        "layout": args.layout,
        "repeat": args.repeat,
        "results": {
            str(n): {
                name: [{k: v for k, v in asdict(r).items() if k != "changed"} for r in s.runs]
                for name, s in sc.items()
            }
            for n, sc in results.items()
        },
        "targets": target_data,
        "notes": sorted(notes),
        **extra,
    }
    for name in ("latest", stamp):
        (args.out / f"{name}.md").write_text(text)
        (args.out / f"{name}.json").write_text(json.dumps(raw, indent=2) + "\n")
    say(f"wrote {args.out / 'latest.md'} and {args.out / f'{stamp}.md'}")
    return 0 if all(t["result"] != "FAIL" for t in target_data) else 3


if __name__ == "__main__":
    sys.exit(main())
