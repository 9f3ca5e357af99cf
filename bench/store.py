"""Benchmark: the daemon's no-op pass over the BENCH.md workload with each state
store, SQLite (the default) and PostgreSQL (`--state-url`), in one run,
alternating (issue 13).

What is timed is the pass the daemon runs when nothing changed: the real
engine's full converge over the loaded desired state (observe, plan, every
transition recorded) and the flush that ends it, then the inventory read
again (`reload`: a restart's, a new leader's first read), on the store the daemon would
have: `SqliteStore` in a state directory, `PostgresStore` on a throwaway local
PostgreSQL 15 (tests/postgres.py; fsync off, as in the tests, so the figure is
the store's work, not the disk's). Each backend has its own tree and root,
converged once first; then the no-op passes alternate between the two.

    .venv/bin/python bench/store.py [--n 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload

from reconciler.engine import Engine
from reconciler.manifests import load
from reconciler.model import ProviderSettings
from reconciler.registry import Registry
from reconciler.store import PostgresStore, SqliteStore
from reconciler.store.buffered import BufferedStore
from tests.postgres import start_server, stop_server


async def _pass(engine: Engine, store: BufferedStore, state: Any) -> tuple[float, float, Any]:
    """One pass and its flush: (wall seconds, flush seconds, report)."""
    started = time.perf_counter()
    report = await engine.converge(state)
    flushing = time.perf_counter()
    store.flush()
    done = time.perf_counter()
    return done - started, done - flushing, report


async def run(n: int, repeat: int, work: Path) -> dict[str, dict[str, list[float]]]:
    server = start_server(Path(tempfile.mkdtemp(prefix="bench-store-pg-")))
    try:
        url = f"postgresql://postgres@{server.host}:{server.port}/postgres"
        engines: dict[str, tuple[Engine, BufferedStore, Any]] = {}
        for name in ("sqlite", "postgres"):
            root, manifests = work / name / "root", work / name / "manifests"
            root.mkdir(parents=True)
            workload.write_manifests(root, n, manifests)
            registry = Registry.discover(
                ProviderSettings(roots=(str(root),), state_dir=str(work / name / "state"))
            )
            state = load(manifests, registry)
            store: BufferedStore = (
                SqliteStore(work / name / "state")
                if name == "sqlite"
                else PostgresStore(url, password=server.password)
            )
            engine = Engine(registry, store)
            wall, flush, report = await _pass(engine, store, state)
            workload.verify(root, n)
            print(f"{name}: first converge {wall:.2f} s (flush {flush:.2f} s)", flush=True)
            engines[name] = (engine, store, state)
        results: dict[str, dict[str, list[float]]] = {
            name: {"wall": [], "flush": [], "reload": []} for name in engines
        }
        for k in range(repeat):
            order = list(engines) if k % 2 == 0 else list(reversed(engines))
            for name in order:
                engine, store, state = engines[name]
                wall, flush, report = await _pass(engine, store, state)
                assert report.count("unchanged") == len(state.resources), report
                results[name]["wall"].append(wall)
                results[name]["flush"].append(flush)
                started = time.perf_counter()  # a restart's (a new leader's) read
                store.reload()
                results[name]["reload"].append(time.perf_counter() - started)
                print(f"{name}: no-op {wall:.3f} s (flush {flush:.3f} s)", flush=True)
        for _, store, _ in engines.values():
            store.close()
        return results
    finally:
        stop_server(server)
        shutil.rmtree(server.socket_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        results = asyncio.run(run(args.n, args.repeat, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nN={args.n} ({args.n * 12 // 10} resources), {args.repeat} no-op passes each")
    print("| store | no-op pass, median (min-max) | of which the flush | reload the inventory |")
    print("|---|---:|---:|---:|")
    for name, figures in results.items():
        wall, flush, reload = figures["wall"], figures["flush"], figures["reload"]
        print(
            f"| {name} | {statistics.median(wall):.3f} s ({min(wall):.3f}-{max(wall):.3f}) | "
            f"{statistics.median(flush):.3f} s | {statistics.median(reload):.3f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
