"""The status page at 10,000 resources over HTTP, beside /metrics: p50/p95 of
GET / (the whole page), GET /live (the live part: changed = no ETag sent, so
built and sent whole; unchanged = the ETag sent, a 304), GET /api/v1/page (the
JSON), a filtered and sorted page, and GET /metrics, taken in turns so that
they see the same daemon (target: each well under the scrape).

    python bench/page.py [--n 10000] [--repeat 40]

The real daemon process follows a bare git repository of the BENCH.md workload
(N files, N/10 directories, N/10 symlinks), set up with bench/daemon.py's and
bench/workload.py's helpers. Figures go to stdout and bench/results/page-latest.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import _get, _git, _p, _wait, started_workload

TARGETS = {
    "GET / (page 1 of 100 rows)": ("/", {}),
    "GET /live, changed (no ETag)": ("/live", {}),
    "GET /live, unchanged (304)": ("/live", {"etag": True}),
    "GET /api/v1/page": ("/api/v1/page", {}),
    "GET /?q=f00&sort=state&order=desc": ("/?q=f00&sort=state&order=desc", {}),
    "GET /metrics": ("/metrics", {}),
}


def _fetch(url: str, headers: dict[str, str]) -> tuple[int, int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, len(response.read()), response.headers.get("ETag", "")
    except urllib.error.HTTPError as error:  # the 304
        with error:
            return error.code, len(error.read()), error.headers.get("ETag", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    n = args.n
    base_dir = Path(tempfile.mkdtemp(prefix="reconciler-page-bench-"))
    with started_workload(base_dir, n) as bench:
        base, work = bench.base, bench.work
        head = _git("rev-parse", "HEAD", cwd=work)

        def converged() -> bool:
            try:
                status = _get(f"{base}/api/v1/status")
            except OSError:
                return False
            return (status.get("revision") or {}).get("id") == head and not status["queue"]

        _wait(converged, timeout=900, step=0.2)
        time.sleep(2)  # the pass's tail (watches, resync schedule) out of the way
        total = sum(_get(f"{base}/api/v1/status")["resources"].values())
        times: dict[str, list[float]] = {name: [] for name in TARGETS}
        sizes: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, (path, options) in TARGETS.items():
                headers = {}
                if options.get("etag"):
                    _, _, tag = _fetch(base + path, {})
                    headers["If-None-Match"] = tag
                started = time.perf_counter()
                status, size, _ = _fetch(base + path, headers)
                times[name].append(time.perf_counter() - started)
                assert status == (304 if options.get("etag") else 200), (name, status)
                sizes[name] = size
        lines = [
            f"# status page benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            "",
            f"N={n} ({total} resources); {args.repeat} samples each, taken in turns; "
            f"load avg {os.getloadavg()[0]:.2f}",
            "",
            "| request | p50 (ms) | p95 (ms) | max (ms) | bytes |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, values in times.items():
            lines.append(
                f"| {name} | {_p(values, 0.5) * 1000:.1f} | {_p(values, 0.95) * 1000:.1f} | "
                f"{max(values) * 1000:.1f} | {sizes[name]:,} |"
            )
        report = "\n".join(lines) + "\n"
        print(report)
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        (out / "page-latest.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
