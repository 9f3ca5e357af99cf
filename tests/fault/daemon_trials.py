"""The heal phase through the daemon: SIGKILL `reconciler run` while it heals
out-of-band edits, start it again, and check what tests/fault/trials.py checks
once it has converged and stopped (decisions 0072, 0073).

The daemon follows the workspace's config tree in local mode and heals from its
watches (the poll interval is an hour). Its heal is calibrated once on a clean
heal, from the end of the drift to a converged tree; the kill comes a uniform
5%-95% of that after the drift (the daemon reacts to the drift's own events, so
there is no separate "work began" moment to wait for).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.e2e.daemon_harness import DaemonProcess, Daemons, WaitTimeout, wait_until
from tests.fault.trials import (
    KILL_FROM,
    KILL_TO,
    TrialResult,
    Workspace,
    WorkWatch,
    check_converged,
)
from tests.fault.workload import Desired, compare, drift, snapshot, write_config

CONVERGE_TIMEOUT = 60.0
PHASE = "daemon-heal"


def _start(daemons: Daemons, ws: Workspace) -> DaemonProcess:
    # A long interval: the heal must come from the daemon's watches, not a poll.
    return daemons.start(ws.config, root=ws.root, state_dir=ws.state, interval="1h")


def _wait_converged(daemon: DaemonProcess, ws: Workspace, desired: Desired) -> None:
    wait_until(
        lambda: not compare(snapshot(ws.root), desired).problems,
        "the tree to equal the desired state",
        timeout=CONVERGE_TIMEOUT,
        interval=0.05,
        context=daemon.log_tail,
    )


def _drifted_daemon(daemons: Daemons, ws: Workspace, rng: random.Random) -> DaemonProcess:
    """The base workload converged, a daemon on it past its quiet window, then drift."""
    ws.restore()
    write_config(ws.config, ws.root, ws.base_state)
    daemon = _start(daemons, ws)
    daemon.settle()
    drift(ws.root, ws.base_state, rng)
    return daemon


def calibrate_daemon_heal(ws: Workspace, workdir: Path) -> float:
    """Seconds from the end of the drift to a converged tree, healed by a daemon."""
    with Daemons(workdir / "calibrate") as daemons:
        daemon = _drifted_daemon(daemons, ws, random.Random(0))
        began = time.monotonic()
        # The heal ends with its last write (to the store's log or a directory); a
        # converged tree is only checked now and then, since reading it is slow.
        watch = WorkWatch(ws)
        last_seen, last_change = watch.look(), began
        next_check = began + 0.1
        while True:
            now = time.monotonic()
            if (seen := watch.look()) != last_seen:
                last_seen, last_change = seen, now
            if now >= next_check:
                if (
                    now - last_change > 0.3
                    and not compare(snapshot(ws.root), ws.base_state).problems
                ):
                    break
                if now - began > CONVERGE_TIMEOUT:
                    raise WaitTimeout(f"a clean daemon heal did not converge:\n{daemon.log_tail()}")
                next_check = time.monotonic() + 0.1
            time.sleep(0.001)
        daemon.stop()
    return last_change - began


def run_daemon_heal_trial(
    ws: Workspace, index: int, seed: int, window: float, workdir: Path
) -> TrialResult:
    """Trial `index` of the run seeded `seed` (random.Random(seed + index)): SIGKILL
    the healing daemon a uniform 5%-95% of `window` after the drift, start a new one
    on the same state, wait for convergence, stop it, check."""
    started = time.monotonic()
    rng = random.Random(seed + index)
    delay = rng.uniform(KILL_FROM, KILL_TO) * window
    result = TrialResult(index, seed, PHASE, "work", delay)
    with Daemons(workdir / f"trial-{index}") as daemons:
        daemon = _drifted_daemon(daemons, ws, rng)
        time.sleep(delay)
        daemon.kill()
        after_kill = snapshot(ws.root)
        # The drift touches declared paths only, so anything undeclared is the daemon's.
        result.leftovers_after_kill = sorted(after_kill.keys() - ws.base_state.keys())
        # (whether it had begun cannot be told apart: the drifted tree is not read
        # before the kill, which would race the daemon's heal)
        converged = not compare(after_kill, ws.base_state).problems
        result.landing = "after-work" if converged else "during"
        again = _start(daemons, ws)
        try:
            _wait_converged(again, ws, ws.base_state)
        except WaitTimeout as exc:
            result.failures.append(f"the restarted daemon did not converge: {exc}")
        again.stop()
    result.failures += check_converged(ws, ws.base_state, "the restarted daemon")
    result.seconds = time.monotonic() - started
    return result
