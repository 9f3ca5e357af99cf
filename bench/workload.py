"""The filesystem benchmark workload of /work/shared/BENCH.md, as manifests.

For N (a multiple of 10), under an absolute root directory:

- N/10 directories ``d0000`` ..., mode 0755;
- N files ``d{i//10:04d}/f{i:05d}.txt``, mode 0644, exactly 200 bytes of distinct
  ASCII text ending in a newline (a header line with the number, then hex digests
  of ``"bench:{i}:{k}"``, cut to 199 bytes plus ``"\\n"``);
- N/10 symlinks ``d{j:04d}/link{j:04d}`` -> ``../d{t:04d}/f{t*10+5:05d}.txt`` with
  ``t = (j+1) % (N/10)``, relative targets stored verbatim.

Besides writing the manifests this module checks a tree against the desired
state (`verify`) and drifts a converged tree out of band (`drift`). Run it as a
script to write the manifests of one size:

    python bench/workload.py 1000 /tmp/bench-root /tmp/bench-manifests
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

FILE_SIZE = 200
DIR_MODE = 0o755
FILE_MODE = 0o644

LAYOUTS = ("per-dir", "per-100-dirs", "single")
DEFAULT_LAYOUT = "per-100-dirs"
"""Chosen by measurement (bench/layouts.py, figures in bench/README.md)."""


def _check_n(n: int) -> None:
    if n <= 0 or n % 10:
        raise ValueError(f"N must be a positive multiple of 10, found {n}")


def dir_name(d: int) -> str:
    return f"d{d:04d}"


def file_rel(i: int) -> str:
    return f"{dir_name(i // 10)}/f{i:05d}.txt"


def link_rel(j: int) -> str:
    return f"{dir_name(j)}/link{j:04d}"


def link_target(j: int, n: int) -> str:
    t = (j + 1) % (n // 10)
    return f"../{dir_name(t)}/f{t * 10 + 5:05d}.txt"


def _text(i: int, salt: str) -> bytes:
    lines = [f"bench file {i:05d}{salt}"]
    k = 0
    while sum(len(line) + 1 for line in lines) < FILE_SIZE:
        lines.append(hashlib.sha256(f"bench:{i}:{k}{salt}".encode()).hexdigest())
        k += 1
    data = "\n".join(lines).encode("ascii")[: FILE_SIZE - 1] + b"\n"
    assert len(data) == FILE_SIZE
    return data


def content(i: int) -> bytes:
    """The desired 200 bytes of file i."""
    return _text(i, "")


def drifted_content(i: int) -> bytes:
    """What `drift` writes over file i: same size, other bytes."""
    data = _text(i, ":drift")
    assert data != content(i)
    return data


# manifests


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text)


def _directory_doc(root: str, d: int) -> str:
    return (
        "apiVersion: reconciler/v1\n"
        "kind: Directory\n"
        f"metadata:\n  name: {dir_name(d)}\n"
        f'spec:\n  path: {_q(f"{root}/{dir_name(d)}")}\n  mode: "0755"\n'
    )


def _file_doc(root: str, i: int) -> str:
    return (
        "apiVersion: reconciler/v1\n"
        "kind: File\n"
        f"metadata:\n  name: f{i:05d}\n"
        f"spec:\n  path: {_q(f'{root}/{file_rel(i)}')}\n"
        '  mode: "0644"\n'
        f"  content: {_q(content(i).decode('ascii'))}\n"
    )


def _symlink_doc(root: str, j: int, n: int) -> str:
    return (
        "apiVersion: reconciler/v1\n"
        "kind: Symlink\n"
        f"metadata:\n  name: link{j:04d}\n"
        f"spec:\n  path: {_q(f'{root}/{link_rel(j)}')}\n"
        f"  target: {_q(link_target(j, n))}\n"
    )


def _directory_docs(root: str, d: int, n: int) -> Iterator[str]:
    yield _directory_doc(root, d)
    for i in range(d * 10, d * 10 + 10):
        yield _file_doc(root, i)
    yield _symlink_doc(root, d, n)


def write_manifests(root: str | Path, n: int, out: str | Path, layout: str = DEFAULT_LAYOUT) -> int:
    """Write the manifests of the workload for `n` under `out`; return the file count.

    Layouts: ``per-dir`` one YAML file per directory (12 documents each),
    ``per-100-dirs`` one per 100 directories (1,200 documents each), ``single``
    one file with everything.
    """
    _check_n(n)
    root = os.fspath(root)
    if not os.path.isabs(root) or os.path.normpath(root) != root:
        raise ValueError(f"root must be an absolute, normalized path, found {root!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, found {layout!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        old.unlink()
    dirs = n // 10
    group = {"per-dir": 1, "per-100-dirs": 100, "single": dirs}[layout]
    written = 0
    for first in range(0, dirs, group):
        docs = [
            doc
            for d in range(first, min(dirs, first + group))
            for doc in _directory_docs(root, d, n)
        ]
        name = f"bench-{first:04d}.yaml" if group > 1 else f"{dir_name(first)}.yaml"
        (out / name).write_text("---\n".join(docs), encoding="ascii")
        written += 1
    return written


# checking and drifting a tree


class Mismatch(AssertionError):
    """The tree differs from the desired state; `problems` lists every difference."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} differences from the desired state:\n  {shown}{more}")


def _mode_of(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode)


def verify(root: str | Path, n: int) -> None:
    """Check that the tree under `root` is exactly the desired state for `n`.

    Every directory, file and symlink: type, mode, contents, link target; and no
    entry that is not part of the workload anywhere under root. Raises `Mismatch`.
    """
    _check_n(n)
    root = os.fspath(root)
    problems: list[str] = []
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or _mode_of(st) != DIR_MODE:
        problems.append(f"{root}: expected a directory with mode 0755, found {st.st_mode:o}")
    dirs = n // 10
    expected_dirs = {dir_name(d) for d in range(dirs)}
    present = set(os.listdir(root))
    problems += [f"{root}/{e}: unexpected entry" for e in sorted(present - expected_dirs)]
    problems += [f"{root}/{e}: missing directory" for e in sorted(expected_dirs - present)]
    for d in range(dirs):
        dpath = f"{root}/{dir_name(d)}"
        try:
            st = os.lstat(dpath)
        except FileNotFoundError:
            continue  # reported above
        if not stat.S_ISDIR(st.st_mode):
            problems.append(f"{dpath}: not a directory")
            continue
        if _mode_of(st) != DIR_MODE:
            problems.append(f"{dpath}: mode {_mode_of(st):04o}, expected 0755")
        link = f"link{d:04d}"
        expected = {f"f{i:05d}.txt" for i in range(d * 10, d * 10 + 10)} | {link}
        entries = set(os.listdir(dpath))
        problems += [f"{dpath}/{e}: unexpected entry" for e in sorted(entries - expected)]
        problems += [f"{dpath}/{e}: missing" for e in sorted(expected - entries)]
        for i in range(d * 10, d * 10 + 10):
            fpath = f"{root}/{file_rel(i)}"
            try:
                st = os.lstat(fpath)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{fpath}: not a regular file")
                continue
            if _mode_of(st) != FILE_MODE:
                problems.append(f"{fpath}: mode {_mode_of(st):04o}, expected 0644")
            with open(fpath, "rb") as handle:
                data = handle.read()
            if data != content(i):
                problems.append(f"{fpath}: content differs ({len(data)} bytes)")
        lpath = f"{dpath}/{link}"
        try:
            st = os.lstat(lpath)
        except FileNotFoundError:
            continue
        if not stat.S_ISLNK(st.st_mode):
            problems.append(f"{lpath}: not a symlink")
        elif (target := os.readlink(lpath)) != link_target(d, n):
            problems.append(f"{lpath}: points to {target!r}, expected {link_target(d, n)!r}")
    if problems:
        raise Mismatch(problems)


def rewritten_indices(n: int) -> list[int]:
    return [i for i in range(n) if i % 100 == 17]


def deleted_indices(n: int) -> list[int]:
    return [i for i in range(n) if i % 100 == 53]


def drift(root: str | Path, n: int) -> tuple[int, int]:
    """Out-of-band drift: rewrite files with i % 100 == 17 (same size, other bytes,
    mode kept) and delete files with i % 100 == 53. Returns (rewritten, deleted)."""
    _check_n(n)
    root = os.fspath(root)
    rewritten = rewritten_indices(n)
    deleted = deleted_indices(n)
    for i in rewritten:
        with open(f"{root}/{file_rel(i)}", "r+b") as handle:
            handle.write(drifted_content(i))
            handle.truncate()
    for i in deleted:
        os.unlink(f"{root}/{file_rel(i)}")
    return len(rewritten), len(deleted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the benchmark manifests for one N.")
    parser.add_argument("n", type=int, help="number of files (a multiple of 10)")
    parser.add_argument("root", help="absolute root directory the manifests manage")
    parser.add_argument("out", help="directory to write the manifests into")
    parser.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT)
    args = parser.parse_args(argv)
    count = write_manifests(os.path.abspath(args.root), args.n, args.out, args.layout)
    print(f"wrote {count} manifest files for N={args.n} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
