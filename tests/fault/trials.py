"""Seeded SIGKILL trials against the real `reconciler apply` (issue 8, "crash-clean").

One trial: bring a workspace (managed root, state directory, config tree, all at
fixed paths) to the starting point of a phase, start `python -m reconciler apply`
as a process, SIGKILL it at a seeded point, run apply again to completion, and
check what the crash may not leave behind:

- the second apply exits 0;
- the tree under the root is exactly the desired state: every declared path has
  its type, mode, content or link target, and there is no other entry anywhere
  under the root, whatever its name (a "stray", decision 0073);
- `PRAGMA integrity_check` of the state database answers ok, and its inventory
  holds exactly the desired resources;
- `reconciler plan` then exits 0 (nothing left to do).

Phases: `first` (empty root and state), `update` (a revision changing about 30%
of contents, modes and link targets), `heal` (out-of-band edits and deletes of
about 10% of the resources, then apply of the same revision) and `prune` (a
revision removing about 30% of the resources, whole directories included). A
third of the update trials apply next a revision that also prunes about 30%, so
directories the killed run was writing into are removed.

Trial `i` of a run with seed `S` draws everything from `random.Random(S + i)`
(decision 0072): the revision or the drift, the kill mode and the kill delay. The
delay is a uniform fraction (5%..95%) of the phase's duration measured on a clean
run in the same workspace; in `commit` mode the kill waits, after that delay, for
the state database's write-ahead log to change and fires at once (inside or just
after a store commit). Where a kill lands also depends on the machine's speed, so
a replay repeats the workload and the delay, not necessarily the landing point.

Shared by tests/fault/test_sigkill.py (the CI run) and scripts/fault_injection.py
(longer runs and a summary table).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.fault.workload import (
    DB_NAME,
    Desired,
    base_workload,
    compare,
    drift,
    pruned,
    resource_ids,
    snapshot,
    store_check,
    updated,
    write_config,
)

PHASES = ("first", "update", "heal", "prune")
Phase = Literal["first", "update", "heal", "prune"]
DEFAULT_SEED = 20261201

KILL_FROM, KILL_TO = 0.05, 0.95
KILL_MODES = {"work": 0.7, "commit": 0.2, "any": 0.1}
"""How often each kill mode is drawn. `work`: at a uniform point of the calibrated
work window; `commit`: the same, then at the next write to the store's log;
`any`: at a uniform point of the whole run, start-up and manifest loading included."""
RUN_TIMEOUT = 120.0
PRUNE_AFTER_UPDATE = 1 / 3
"""Share of update trials whose next apply is of a revision pruning about 30%,
whole directories included (a crash's leftovers once made such prunes fail)."""


# the workspace


def cli(command: str, ws: Workspace) -> list[str]:
    argv = [sys.executable, "-m", "reconciler", command, str(ws.config)]
    argv += ["--root", str(ws.root), "--state-dir", str(ws.state)]
    return [*argv, "--no-progress"] if command == "apply" else argv


@dataclass
class Run:
    returncode: int
    seconds: float
    output: str


def run_cli(command: str, ws: Workspace, timeout: float = RUN_TIMEOUT) -> Run:
    started = time.monotonic()
    done = subprocess.run(
        cli(command, ws), capture_output=True, text=True, timeout=timeout, check=False
    )
    return Run(done.returncode, time.monotonic() - started, done.stdout + done.stderr)


@dataclass
class Workspace:
    """Root, state and config at fixed paths under `base` (manifests hold absolute
    paths, so a saved starting point can only be restored to the same place), and
    the calibration: how long a clean run of each phase takes."""

    base: Path
    timings: dict[str, Timing] = field(default_factory=dict)
    base_state: Desired = field(default_factory=base_workload)

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def config(self) -> Path:
        return self.base / "config"

    @property
    def _saved(self) -> Path:
        return self.base / "saved"

    def clear(self) -> None:
        for path in (self.root, self.state):
            if path.exists():
                shutil.rmtree(path)
        self.root.mkdir(parents=True)

    def restore(self) -> None:
        """The base workload applied and converged (a copy of the saved one)."""
        for name in ("root", "state"):
            if (self.base / name).exists():
                shutil.rmtree(self.base / name)
            shutil.copytree(self._saved / name, self.base / name, symlinks=True)

    def prepare(self, phase: str, rng: random.Random) -> tuple[Desired, Desired]:
        """Bring the workspace to the start of `phase`; return (desired, tree before)."""
        if phase == "first":
            self.clear()
            desired = self.base_state
        else:
            self.restore()
            desired = self.base_state
            if phase == "update":
                desired = updated(self.base_state, rng)
            elif phase == "prune":
                desired = pruned(self.base_state, rng)
            elif phase == "heal":
                drift(self.root, self.base_state, rng)
        write_config(self.config, self.root, desired)
        return desired, snapshot(self.root)

    def calibrate(self) -> None:
        """Apply the base workload (saved as every later phase's start) and time one
        clean run of each phase."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.prepare("first", random.Random(0))
        self.timings["first"] = _timed_clean_run(self, "first")
        if self._saved.exists():
            shutil.rmtree(self._saved)
        for name in ("root", "state"):
            shutil.copytree(self.base / name, self._saved / name, symlinks=True)
        for phase in PHASES[1:]:
            self.prepare(phase, random.Random(0))
            self.timings[phase] = _timed_clean_run(self, phase)


@dataclass(frozen=True)
class Timing:
    """A clean run of a phase, in seconds from the start of the process: when its
    work began (the first write to the store or change to a directory of the tree;
    before that the process imports and loads the manifests) and when it exited."""

    work: float
    end: float


def _wal_size(ws: Workspace) -> int:
    try:
        return os.stat(ws.state / f"{DB_NAME}-wal").st_size
    except FileNotFoundError:
        return 0


class WorkWatch:
    """Sees the first sign of work of an apply: its first write to the store's log
    or a change of any directory of the tree (a directory's mtime changes when an
    entry is created, renamed or removed in it)."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws
        self._dirs = [ws.root]
        self._dirs += [ws.root / p for p, e in snapshot(ws.root).items() if e.kind == "dir"]
        self._first = self.look()

    def look(self) -> tuple[int, list[int]]:
        stamps = []
        for path in self._dirs:
            try:
                stamps.append(os.stat(path).st_mtime_ns)
            except FileNotFoundError:
                stamps.append(0)
        return _wal_size(self._ws), stamps

    def started(self) -> bool:
        return self.look() != self._first


def _timed_clean_run(ws: Workspace, phase: str) -> Timing:
    watch = WorkWatch(ws)
    # Output to a file, not a pipe: a pipe nobody reads while polling could fill up.
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        with subprocess.Popen(cli("apply", ws), stdout=out, stderr=subprocess.STDOUT) as proc:
            work: float | None = None
            while proc.poll() is None:
                if work is None and watch.started():
                    work = time.monotonic() - started
                time.sleep(0.001)
        end = time.monotonic() - started
        out.seek(0)
        output = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise AssertionError(f"clean {phase} apply exited {proc.returncode}:\n{output[-4000:]}")
    return Timing(work if work is not None else end, end)


# one trial


Landing = Literal["before", "during", "after-work", "exited"]
"""Where the kill landed: before any change to the tree, during the work, after the
tree was already converged (in the final commits), or after the process exited."""


@dataclass
class TrialResult:
    index: int
    base_seed: int
    phase: str
    mode: str
    delay: float
    landing: str = ""
    killed_rc: int = 0
    leftovers_after_kill: list[str] = field(default_factory=list)
    """Entries the kill left that the desired state does not declare."""
    next_revision: str = "same"
    """The revision of the next apply: the same, or (some updates) one that prunes."""
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def seed(self) -> int:
        return self.base_seed + self.index

    @property
    def replay(self) -> str:
        return (
            f"python scripts/fault_injection.py --seed {self.base_seed} --first {self.index} "
            f"--trials 1 --phase {self.phase}"
        )

    def describe(self) -> str:
        head = (
            f"trial {self.index} (seed {self.seed}, phase {self.phase}, kill mode {self.mode}, "
            f"delay {self.delay:.3f} s, landed {self.landing}, next revision "
            f"{self.next_revision})"
        )
        return head + "".join(f"\n  {f}" for f in self.failures) + f"\n  replay: {self.replay}"


def _sleep_until(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for the monotonic `deadline`; False if the process exits first."""
    while (left := deadline - time.monotonic()) > 0:
        if proc.poll() is not None:
            return False
        time.sleep(min(0.001, left))
    return proc.poll() is None


def _kill(proc: subprocess.Popen[bytes], ws: Workspace, mode: str, delay: float) -> bool:
    """SIGKILL `proc` as `mode` says (see KILL_MODES); False if it exited first.

    `any`: `delay` seconds after the start. `work` and `commit`: `delay` seconds
    after this run's own work began (start-up time varies more from run to run
    than a prune's work lasts); `commit` then waits for the next write to the
    store's log."""
    started = time.monotonic()
    if mode == "any":
        if not _sleep_until(proc, started + delay):
            return False
    else:
        watch = WorkWatch(ws)
        while not watch.started():
            if proc.poll() is not None:
                return False
            time.sleep(0.0005)
        if not _sleep_until(proc, time.monotonic() + delay):
            return False
    if mode == "commit":
        size = _wal_size(ws)
        while _wal_size(ws) == size:
            if proc.poll() is not None:
                return False
            time.sleep(0.0002)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    return True


def run_trial(ws: Workspace, index: int, seed: int, phase: str | None = None) -> TrialResult:
    """Trial `index` of the run seeded `seed`; `phase` defaults to PHASES[index % 4]."""
    started = time.monotonic()
    rng = random.Random(seed + index)
    phase = phase or PHASES[index % len(PHASES)]
    mode = rng.choices(list(KILL_MODES), weights=list(KILL_MODES.values()))[0]
    timing = ws.timings[phase]
    # `any` counts from the start of the process, the others from the start of the work.
    span = timing.end if mode == "any" else timing.end - timing.work
    delay = rng.uniform(KILL_FROM, KILL_TO) * span
    result = TrialResult(index, seed, phase, mode, delay)
    desired, before = ws.prepare(phase, rng)

    proc = subprocess.Popen(cli("apply", ws), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        killed = _kill(proc, ws, mode, delay)
        result.killed_rc = proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after_kill = snapshot(ws.root)
    result.leftovers_after_kill = sorted(after_kill.keys() - desired.keys() - before.keys())
    if not killed:
        result.landing = "exited"
    elif after_kill == before:
        result.landing = "before"
    elif not compare(after_kill, desired).problems:
        result.landing = "after-work"
    else:
        result.landing = "during"

    if phase == "update" and rng.random() < PRUNE_AFTER_UPDATE:
        # The next revision removes whole directories, first those the kill left an
        # undeclared entry in: what a crash leaves must not make their prune fail.
        dirty = {os.path.dirname(p) for p in result.leftovers_after_kill}
        desired = pruned(desired, rng, first=dirty)
        write_config(ws.config, ws.root, desired)
        result.next_revision = "pruned"
    rerun = run_cli("apply", ws)
    if rerun.returncode != 0:
        result.failures.append(
            f"apply after the kill exited {rerun.returncode}, expected 0:\n"
            + _indent(rerun.output[-3000:])
        )
    result.failures += check_converged(ws, desired, "the next apply")
    result.seconds = time.monotonic() - started
    return result


def check_converged(ws: Workspace, desired: Desired, after: str) -> list[str]:
    """What must hold once `after` has run: the tree is `desired` exactly, the
    store is intact and holds its ids, and plan finds nothing to do."""
    failures = []
    diff = compare(snapshot(ws.root), desired)
    if diff.problems:
        shown = diff.problems[:30]
        more = f"\n    ... and {len(diff.problems) - 30} more" if len(diff.problems) > 30 else ""
        failures.append(
            f"tree differs from the desired state after {after} "
            f"({len(diff.stray)} stray, {len(diff.missing)} missing, {len(diff.wrong)} wrong):\n"
            + _indent("\n".join(shown))
            + more
        )
    try:
        integrity, ids = store_check(ws.state)
    except sqlite3.Error as exc:
        failures.append(f"state database {ws.state / DB_NAME}: {exc}")
    else:
        if integrity != "ok":
            failures.append(f"PRAGMA integrity_check: {integrity!r}, expected 'ok'")
        want = resource_ids(desired)
        if ids != want:
            failures.append(
                f"store inventory differs from the desired state: {len(ids - want)} extra "
                f"{sorted(ids - want)[:10]}, {len(want - ids)} missing {sorted(want - ids)[:10]}"
            )
    plan = run_cli("plan", ws)
    if plan.returncode != 0:
        failures.append(
            f"plan after {after} exited {plan.returncode}, expected 0 (no changes):\n"
            + _indent(plan.output[-2000:])
        )
    return failures


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# summaries


def summary(results: Iterable[TrialResult]) -> str:
    """A table: trials per phase, where the kills landed, failures; then every failure."""
    results = list(results)
    landings = ("before", "during", "after-work", "exited")
    head = f"{'phase':<12}{'trials':>7}" + "".join(f"{n:>12}" for n in landings)
    head += f"{'commit-mode':>13}{'left temp':>11}{'failed':>8}{'s/trial':>9}"
    lines = [head, "-" * len(head)]
    for phase in (*PHASES, "daemon-heal", "all"):
        rows = [r for r in results if phase in ("all", r.phase)]
        if not rows:
            continue
        count = Counter(r.landing for r in rows)
        line = f"{phase:<12}{len(rows):>7}" + "".join(f"{count[n]:>12}" for n in landings)
        line += f"{sum(r.mode == 'commit' for r in rows):>13}"
        line += f"{sum(bool(r.leftovers_after_kill) for r in rows):>11}"
        line += f"{sum(not r.ok for r in rows):>8}"
        line += f"{sum(r.seconds for r in rows) / len(rows):>9.1f}"
        lines.append(line)
    failed = [r for r in results if not r.ok]
    if failed:
        lines.append("")
        lines.append(f"{len(failed)} failed trials:")
        lines += [r.describe() for r in failed]
    return "\n".join(lines)
