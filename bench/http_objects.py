"""Benchmark: a no-op pass over 1,000 HttpObjects against a local REST server.

The server (tests/httpserver.py) runs in a process of its own so it does not
share the GIL with the engine. A tree of one Connection and N HttpObjects is
applied once (creating them), then applied again `--repeat` times with nothing
to change; each run is the real CLI (`python -m reconciler apply`), and its
engine time is the figure it prints ("engine X s"). The target of issue 9 is a
median no-op engine time of at most 2 s for N = 1,000.

    .venv/bin/python bench/http_objects.py [--n 1000] [--repeat 5] [--max-in-flight 8]

Exits 3 when the target is missed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.httpserver import ApiProcess  # noqa: E402

TARGET = 2.0
_ENGINE = re.compile(r"engine (\d+(?:\.\d+)?) s")


def write_tree(config: Path, base_url: str, n: int, max_in_flight: int) -> None:
    docs = [
        "apiVersion: reconciler/v1\nkind: Connection\nmetadata: {name: api}\n"
        f"spec: {{type: http, baseUrl: '{base_url}', maxInFlight: {max_in_flight}}}\n"
    ]
    docs += [
        "apiVersion: reconciler/v1\nkind: HttpObject\n"
        f"metadata: {{name: obj-{i}}}\n"
        f"spec: {{connection: api, url: /objects/obj-{i}, "
        f"body: {{name: obj-{i}, size: {i}, labels: {{team: t{i % 10}}}, tags: [a, b]}}}}\n"
        for i in range(n)
    ]
    (config / "objects.yaml").write_text("---\n".join(docs))


def apply(work: Path) -> tuple[float, float, str]:
    """One `reconciler apply`: (engine seconds, wall seconds, summary line)."""
    argv = [sys.executable, "-m", "reconciler", "apply", str(work / "config")]
    argv += ["--root", str(work / "root"), "--state-dir", str(work / "state")]
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"apply failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    summary = result.stdout.strip().splitlines()[-1]
    match = _ENGINE.search(summary)
    if match is None:
        raise SystemExit(f"no engine time in: {summary}")
    return float(match.group(1)), wall, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-in-flight", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as scratch, ApiProcess() as server:
        work = Path(scratch)
        (work / "config").mkdir()
        (work / "root").mkdir()
        write_tree(work / "config", server.base_url, args.n, args.max_in_flight)
        engine, wall, summary = apply(work)
        print(f"create {args.n}: engine {engine:.2f} s, wall {wall:.2f} s  [{summary}]")
        runs = [apply(work) for _ in range(args.repeat)]
        for _, _, summary in runs:
            if f"{args.n + 1} unchanged" not in summary:  # the objects and the Connection
                raise SystemExit(f"not a no-op pass: {summary}")
    engines = [r[0] for r in runs]
    walls = [r[1] for r in runs]
    median = statistics.median(engines)
    print(
        f"no-op {args.n} HttpObjects (maxInFlight {args.max_in_flight}, {args.repeat} runs): "
        f"engine median {median:.2f} s (min {min(engines):.2f}, max {max(engines):.2f}), "
        f"wall median {statistics.median(walls):.2f} s; target <= {TARGET:.1f} s: "
        f"{'ok' if median <= TARGET else 'MISSED'}"
    )
    return 0 if median <= TARGET else 3


if __name__ == "__main__":
    sys.exit(main())
