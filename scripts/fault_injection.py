"""Run the crash-clean fault-injection trials (tests/fault) at any length.

    python scripts/fault_injection.py --trials 100 [--seed S] [--first N]
        [--phase first|update|heal|prune ...] [--workdir DIR] [--keep-going]

Trial i (i from --first) draws everything from random.Random(S + i) and runs
phase PHASES[i % 4], or the --phase list in turn; `--phase daemon-heal` SIGKILLs
the daemon while it heals (tests/fault/daemon_trials.py). The same code runs in CI as
tests/fault/test_sigkill.py (32 trials); a failure there prints the command line
that replays it here. Prints one line per trial, then a table: trials per phase,
where the kills landed, trials whose kill left an undeclared entry behind (before
the next apply), failures, seconds per trial; then every failure. Exit 1 if any
trial failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fault.daemon_trials import PHASE as DAEMON_HEAL
from tests.fault.daemon_trials import calibrate_daemon_heal, run_daemon_heal_trial
from tests.fault.trials import (
    DEFAULT_SEED,
    PHASES,
    TrialResult,
    Workspace,
    run_trial,
    summary,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100, help="how many trials (default 100)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the run's seed")
    parser.add_argument("--first", type=int, default=0, help="index of the first trial")
    parser.add_argument(
        "--phase",
        action="append",
        choices=[*PHASES, DAEMON_HEAL],
        help=f"only these phases (repeatable; {DAEMON_HEAL} only when named)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the workspace goes (default: a tmp dir)"
    )
    parser.add_argument("--stop", action="store_true", help="stop at the first failed trial")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error(f"--trials must be at least 1, found {args.trials}")
    phases = args.phase or list(PHASES)

    with tempfile.TemporaryDirectory(prefix="reconciler-fault-") as tmp:
        workspace = Workspace(args.workdir or Path(tmp))
        started = time.monotonic()
        workspace.calibrate()
        print(f"seed {args.seed}; calibrated in {time.monotonic() - started:.1f} s:")
        for phase, timing in workspace.timings.items():
            print(f"  {phase:<7} work starts at {timing.work:.3f} s, ends at {timing.end:.3f} s")
        window = 0.0
        if DAEMON_HEAL in phases:
            window = calibrate_daemon_heal(workspace, workspace.base / "daemons")
            print(f"  {DAEMON_HEAL} heals in {window:.3f} s")
        results: list[TrialResult] = []
        for index in range(args.first, args.first + args.trials):
            phase = phases[index % len(phases)]
            if phase == DAEMON_HEAL:
                daemons = workspace.base / "daemons"
                result = run_daemon_heal_trial(workspace, index, args.seed, window, daemons)
            else:
                result = run_trial(workspace, index, args.seed, phase)
            results.append(result)
            status = "ok" if result.ok else "FAILED"
            left = (
                f", kill left {len(result.leftovers_after_kill)}"
                if result.leftovers_after_kill
                else ""
            )
            print(
                f"trial {index:4d} {phase:<7} {result.mode:<7} delay {result.delay:6.3f} s "
                f"landed {result.landing:<10} next {result.next_revision:<6} {status} "
                f"({result.seconds:.1f} s{left})",
                flush=True,
            )
            if not result.ok and args.stop:
                break
        print(f"\n{len(results)} trials in {time.monotonic() - started:.0f} s\n")
        print(summary(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
