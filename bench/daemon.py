"""Daemon benchmarks: commit-to-converged after a webhook, out-of-band change to
healed under watch, and the idle daemon's CPU and memory, on the BENCH.md workload.

    python bench/daemon.py --n 10000 [--repeat 20] [--idle 30]

The real daemon process follows a bare git repository (file://) with a long poll
interval, so only the signed GitHub webhook triggers fetches. Figures go to
stdout and bench/results/daemon-latest.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload

SECRET = b"bench-webhook-secret"
TICKS = os.sysconf("SC_CLK_TCK")


def _git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "b@example.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "b@example.invalid",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _hook(base: str, body: bytes) -> None:
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"{base}/hooks/github",
        data=body,
        method="POST",
        headers={
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": signature,
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202, response.status


def _wait(predicate, timeout: float, step: float = 0.005) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(step)
    return time.perf_counter() - start


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Running:
    """A daemon following the workload's repository (`started_workload`)."""

    base: str
    """Its API, http://127.0.0.1:PORT."""
    root: Path
    work: Path
    """The clone commits are pushed from."""
    daemon: subprocess.Popen[bytes]
    started: float
    """perf_counter() when the process was started."""


@contextlib.contextmanager
def started_workload(
    base_dir: Path, n: int, *options: str, stop_timeout: float = 60.0
) -> Iterator[Running]:
    """The N workload committed to a bare repository under `base_dir`, and a real
    daemon following it (file://, polling hourly) with `options` added; stopped
    (SIGTERM, then SIGKILL after `stop_timeout`) at the end."""
    root, bare, work, state = (base_dir / x for x in ("root", "repo.git", "work", "state"))
    root.mkdir()
    _git("init", "-q", "--bare", "-b", "main", str(bare), cwd=base_dir)
    _git("clone", "-q", str(bare), str(work), cwd=base_dir)
    workload.write_manifests(root, n, work / "manifests")
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "workload", cwd=work)
    _git("push", "-q", "origin", "main", cwd=work)
    port = _free_port()
    log = (base_dir / "daemon.log").open("w")
    started = time.perf_counter()
    daemon = subprocess.Popen(
        [
            sys.executable, "-m", "reconciler", "run", "--repo", bare.as_uri(),
            "--path", "manifests", "--root", str(root), "--state-dir", str(state),
            "--listen", f"127.0.0.1:{port}", "--interval", "1h", *options,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield Running(f"http://127.0.0.1:{port}", root, work, daemon, started)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    n = args.n
    base_dir = Path(tempfile.mkdtemp(prefix="reconciler-daemon-bench-"))
    (base_dir / "secret").write_bytes(SECRET)
    running = started_workload(base_dir, n, "--webhook-secret-file", str(base_dir / "secret"))
    with running as bench:
        base, root, work, daemon, started = (
            bench.base,
            bench.root,
            bench.work,
            bench.daemon,
            bench.started,
        )
        head = _git("rev-parse", "HEAD", cwd=work)

        def at(sha: str) -> bool:
            try:
                status = _get(f"{base}/api/v1/status")
            except OSError:
                return False
            return (status.get("revision") or {}).get("id") == sha and not status["queue"]

        _wait(lambda: at(head), timeout=600, step=0.1)
        first = time.perf_counter() - started
        workload.verify(root, n)
        print(f"first converge of N={n} ({n * 12 // 10} resources): {first:.1f} s")

        # commit to converged: one File's content changes per commit
        commits = []
        manifest_files = sorted((work / "manifests").glob("*.yaml"))
        for k in range(args.repeat):
            i = random.randrange(n)
            path = root / workload.file_rel(i)
            marker = f"c{k:03d}"
            target = next(f for f in manifest_files if f"bench file {i:05d}" in f.read_text())
            text = target.read_text()
            new = re.sub(rf'"bench file {i:05d}[^\\]*', f'"bench file {i:05d} {marker}', text)
            assert new != text, i
            target.write_text(new)
            _git("commit", "-q", "-am", f"change {i}", cwd=work)
            _git("push", "-q", "origin", "main", cwd=work)
            sent = time.perf_counter()
            _hook(base, json.dumps({"ref": "refs/heads/main"}).encode())
            _wait(lambda p=path, m=marker: m in p.read_text(errors="replace"), timeout=60)
            commits.append(time.perf_counter() - sent)
        # out-of-band change to healed, under watch
        heals = []
        for _ in range(args.repeat):
            i = random.randrange(n)
            path = root / workload.file_rel(i)
            good = path.read_bytes()
            time.sleep(0.3)  # let the previous heal's quiet window pass
            started_heal = time.perf_counter()
            path.write_bytes(workload.drifted_content(i))
            _wait(lambda p=path, g=good: p.read_bytes() == g, timeout=60)
            heals.append(time.perf_counter() - started_heal)
        # /metrics scrapes over HTTP, as Prometheus makes them
        scrapes, size = [], 0
        for _ in range(args.repeat):
            started_scrape = time.perf_counter()
            with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
                size = len(response.read())
            scrapes.append(time.perf_counter() - started_scrape)
        # idle
        time.sleep(2)
        cpu0, t0 = _cpu_seconds(daemon.pid), time.perf_counter()
        time.sleep(args.idle)
        cpu = (_cpu_seconds(daemon.pid) - cpu0) / (time.perf_counter() - t0)
        rss, hwm = _rss_mb(daemon.pid), _rss_mb(daemon.pid, "VmHWM")
        lines = [
            f"# daemon benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            "",
            f"N={n} ({n * 12 // 10} resources, all watched); {args.repeat} samples each; "
            f"load avg {os.getloadavg()[0]:.2f}",
            "",
            "| measure | p50 | p95 | max | target |",
            "|---|---:|---:|---:|---|",
            f"| commit to converged after webhook (s) | {_p(commits, 0.5):.3f} | "
            f"{_p(commits, 0.95):.3f} | {max(commits):.3f} | p95 <= 2 s |",
            f"| out-of-band change to healed (s) | {_p(heals, 0.5):.3f} | {_p(heals, 0.95):.3f} | "
            f"{max(heals):.3f} | p95 <= 1 s |",
            f"| /metrics scrape (s), {size:,} bytes | {_p(scrapes, 0.5):.3f} | "
            f"{_p(scrapes, 0.95):.3f} | {max(scrapes):.3f} | <= 0.2 s |",
            "",
            f"idle over {args.idle:.0f} s: CPU {cpu * 100:.2f}% of one core (target <= 2%), "
            f"RSS {rss:.0f} MB, peak RSS {hwm:.0f} MB (target <= 300 MB); "
            f"first converge {first:.1f} s; mean commit-to-converged "
            f"{statistics.mean(commits):.3f} s",
        ]
        report = "\n".join(lines) + "\n"
        print(report)
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        (out / "daemon-latest.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
