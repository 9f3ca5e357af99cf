"""Bundles against the same resources written out flat, side by side in one run.

Two config trees declare the same 1,000 resources (100 x one Directory and nine
Files): one flat, one as 100 instances of a bundle with values. Both are applied
once, then no-op applies alternate (bundled, flat, bundled, ...) so that load on
the machine falls on both alike; the figure is the difference of the medians
(target: at most +0.2 s). A no-op apply of an unchanged tree reads the validated
tree from the cache, so the expansion's own cost is also measured in-process:
`load()` of each tree without a cache, alternating the same way.

    .venv/bin/python bench/bundles.py [--instances 100] [--repeat 11]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import apply_command, clean_env  # noqa: E402

FILES = 9


def _directory(name: str, path: str) -> str:
    return (
        f"apiVersion: reconciler/v1\nkind: Directory\nmetadata: {{name: {name}}}\n"
        f'spec: {{path: "{path}", mode: "0755"}}\n'
    )


def _file(name: str, path: str, content: str, depends: str) -> str:
    return (
        f"apiVersion: reconciler/v1\nkind: File\nmetadata: {{name: {name}}}\n"
        f'spec: {{path: "{path}", mode: "0644", content: "{content}"}}\n'
        f"policy: {{dependsOn: [{depends}]}}\n"
    )


def write_flat(out: Path, root: Path, instances: int) -> None:
    out.mkdir(parents=True)
    for i in range(instances):
        site = f"s{i:04d}"
        docs = [_directory(f"{site}-dir", f"{root}/{site}")]
        for k in range(FILES):
            content = f"site {site} file {k} port {8000 + i}\\n"
            path = f"{root}/{site}/f{k}.txt"
            docs.append(_file(f"{site}-f{k}", path, content, f"Directory/{site}-dir"))
        (out / f"{site}.yaml").write_text("---\n".join(docs))


def write_bundled(out: Path, root: Path, instances: int) -> None:
    bundle = out / "bundles" / "site"
    bundle.mkdir(parents=True)
    (bundle / "bundle.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: BundleDefinition\nparameters:\n"
        '  site: {type: string, required: true, pattern: "s[0-9]+"}\n'
        "  port: {type: integer, minimum: 1024, maximum: 65535, default: 8080}\n"
    )
    docs = [_directory("dir", f"{root}/${{{{ values.site }}}}")]
    for k in range(FILES):
        content = f"site ${{{{ values.site }}}} file {k} port ${{{{ values.port }}}}\\n"
        path = f"{root}/${{{{ values.site }}}}/f{k}.txt"
        docs.append(_file(f"f{k}", path, content, "Directory/dir"))
    (bundle / "site.yaml").write_text("---\n".join(docs))
    instances_docs = [
        f"apiVersion: reconciler/v1\nkind: Bundle\nmetadata: {{name: s{i:04d}}}\n"
        f"spec: {{source: ./bundles/site, namePrefix: s{i:04d}-, "
        f"values: {{site: s{i:04d}, port: {8000 + i}}}}}\n"
        for i in range(instances)
    ]
    (out / "sites.yaml").write_text("---\n".join(instances_docs))


def _wall(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    counts = json.loads(done.stdout)["counts"]
    assert counts["unchanged"] == sum(counts.values()), counts  # a no-op, all in sync
    return elapsed


def _load_time(tree: Path, registry: object) -> float:
    from reconciler.manifests import load

    gc.disable()
    started = time.perf_counter()
    state = load(tree, registry)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    gc.enable()
    assert len(state.resources) % 10 == 0
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    env = clean_env(None)
    with tempfile.TemporaryDirectory(prefix="bench-bundles-") as tmp:
        base = Path(tmp)
        runs = {}
        for name, write in (("bundled", write_bundled), ("flat", write_flat)):
            root = base / name / "root"
            root.mkdir(parents=True)
            write(base / name / "config", root, args.instances)
            runs[name] = apply_command(base / name / "config", root, base / name / "state")
            subprocess.run(runs[name], env=env, check=True, capture_output=True)  # first apply
        times: dict[str, list[float]] = {"bundled": [], "flat": []}
        for _ in range(args.repeat):
            for name in ("bundled", "flat"):
                times[name].append(_wall(runs[name], env))

        from reconciler.model import ProviderSettings
        from reconciler.registry import Registry

        registry = Registry.discover(ProviderSettings(roots=(str(base),)))
        loads: dict[str, list[float]] = {"bundled": [], "flat": []}
        for _ in range(args.repeat):
            for name in ("bundled", "flat"):
                loads[name].append(_load_time(base / name / "config", registry))
    resources = args.instances * (FILES + 1)
    print(
        f"{args.instances} bundle instances ({resources} resources) vs the same flat, "
        f"{args.repeat} alternating runs each"
    )
    for label, data in (("no-op apply (whole process)", times), ("load() without cache", loads)):
        bundled, flat = statistics.median(data["bundled"]), statistics.median(data["flat"])
        print(
            f"  {label}: bundled {bundled:.3f} s, flat {flat:.3f} s, "
            f"difference {bundled - flat:+.3f} s"
        )
    difference = statistics.median(times["bundled"]) - statistics.median(times["flat"])
    print(f"target: no-op difference <= +0.200 s: {'PASS' if difference <= 0.2 else 'FAIL'}")
    return 0 if difference <= 0.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
