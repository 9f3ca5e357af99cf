"""The workload of the fault-injection trials: 1,000 resources as data, the
revisions and out-of-band drift derived from it, their manifests, and the
comparison of a real tree (and state database) with it.

The desired state is a map from paths under the root to `Entry` values, so the
check of a tree is exact and knows nothing of the engine's names: any entry not
in the map is a stray (decision 0073). bench/workload.py is not reused: its
`verify` is fixed to one workload, and the trials need revisions of it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DB_NAME = "state.db"  # reconciler/store/sqlite.py DB_NAME; read from outside, as a user would

TOP_DIRS = 80
NESTED_DIRS = 20  # d00/sub .. d19/sub, so pruning a top directory takes a subtree
FILES_PER_DIR = 8
RESOURCES = (TOP_DIRS + NESTED_DIRS) * (1 + FILES_PER_DIR + 1)
"""1,000: per directory the directory, its files and one symlink."""

FILE_MODES = (0o644, 0o600, 0o640, 0o755, 0o664)
DIR_MODES = (0o755, 0o750, 0o700)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 "


# the desired state


@dataclass(frozen=True)
class Entry:
    """One declared path: a directory (mode), a file (mode, content) or a link (target)."""

    kind: Literal["dir", "file", "link"]
    mode: int | None = None
    data: str = ""
    """File content, or the link target."""


Desired = dict[str, Entry]
"""Path relative to the root -> what must be there."""


def _text(rng: random.Random) -> str:
    size = (
        rng.choice((0, 1, 200, 1000, 4000, 40_000)) if rng.random() < 0.2 else rng.randint(1, 900)
    )
    lines, total = [], 0
    while total < size:
        line = "".join(rng.choices(_ALPHABET, k=min(79, size - total)))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)[:size]


def _dirs() -> list[str]:
    top = [f"d{k:02d}" for k in range(TOP_DIRS)]
    return top + [f"d{k:02d}/sub" for k in range(NESTED_DIRS)]


def base_workload() -> Desired:
    """The 1,000 resources every phase starts from (the same in every trial)."""
    rng = random.Random(1)
    desired: Desired = {}
    for d in _dirs():
        desired[d] = Entry("dir", rng.choice(DIR_MODES))
        for j in range(FILES_PER_DIR):
            desired[f"{d}/f{j}.txt"] = Entry("file", rng.choice(FILE_MODES), _text(rng))
        other = rng.randrange(TOP_DIRS)
        target = f"f{rng.randrange(FILES_PER_DIR)}.txt"
        if rng.random() < 0.5:
            target = f"{'../' * d.count('/')}../d{other:02d}/{target}"
        desired[f"{d}/link"] = Entry("link", data=target)
    assert len(desired) == RESOURCES
    return desired


def updated(base: Desired, rng: random.Random, share: float = 0.3) -> Desired:
    """A revision changing the content or mode (or target) of about `share` of it."""
    out = dict(base)
    for path in sorted(base):
        if rng.random() >= share:
            continue
        entry = base[path]
        if entry.kind == "dir":
            out[path] = Entry("dir", rng.choice([m for m in DIR_MODES if m != entry.mode]))
        elif entry.kind == "link":
            out[path] = Entry("link", data=f"f{rng.randrange(FILES_PER_DIR)}.txt.new")
        else:
            what = rng.choice(("content", "mode", "both"))
            mode = entry.mode
            if what != "content":
                mode = rng.choice([m for m in FILE_MODES if m != entry.mode])
            data = entry.data if what == "mode" else _text(rng) + "\nupdated\n"
            out[path] = Entry("file", mode, data)
    return out


def pruned(
    base: Desired, rng: random.Random, share: float = 0.3, first: Iterable[str] = ()
) -> Desired:
    """A revision without about `share` of the resources: whole directories (with
    everything under them) for about two thirds of it, the directories `first`
    before any other, and single files and links for the rest."""
    goal = int(len(base) * share)
    gone: set[str] = set()
    dirs = [p for p, e in base.items() if e.kind == "dir"]
    rng.shuffle(dirs)
    chosen = [d for d in sorted(set(first)) if d in base and base[d].kind == "dir"]
    dirs = chosen + [d for d in dirs if d not in chosen]
    for d in dirs:
        if len(gone) >= goal * 2 // 3:
            break
        gone |= {p for p in base if p == d or p.startswith(d + "/")}
    leaves = sorted(p for p, e in base.items() if e.kind != "dir" and p not in gone)
    rng.shuffle(leaves)
    gone |= set(leaves[: max(0, goal - len(gone))])
    return {p: e for p, e in base.items() if p not in gone}


def drift(root: Path, desired: Desired, rng: random.Random, share: float = 0.1) -> int:
    """Out-of-band edits of about `share` of the resources under `root`: rewritten
    or emptied content, chmod, deleted files and links, retargeted links, and now
    and then a whole directory removed. Returns how many resources were touched."""
    touched = 0
    for path in sorted(desired):
        full = root / path
        if rng.random() >= share or not os.path.lexists(full):
            continue
        entry = desired[path]
        touched += 1
        if entry.kind == "dir":
            if rng.random() < 0.3:
                shutil.rmtree(full)
            else:
                os.chmod(full, 0o711)
        elif entry.kind == "link":
            full.unlink()
            if rng.random() < 0.5:
                os.symlink("elsewhere", full)
        else:
            action = rng.choice(("rewrite", "empty", "chmod", "delete"))
            if action == "delete":
                full.unlink()
            elif action == "chmod":
                os.chmod(full, 0o606)
            else:
                full.write_text("" if action == "empty" else "edited out of band\n")
    return touched


# manifests


def _root_path(root: Path, rel: str) -> str:
    return f"{root}/{rel}"


def _name(rel: str) -> str:
    return rel.replace("/", ".").replace(".txt", "")


def manifest_docs(root: Path, desired: Mapping[str, Entry]) -> Iterator[dict[str, object]]:
    for rel, entry in sorted(desired.items()):
        spec: dict[str, object] = {"path": _root_path(root, rel)}
        if entry.kind == "dir":
            kind = "Directory"
            spec["mode"] = f"{entry.mode:04o}"
        elif entry.kind == "file":
            kind = "File"
            spec["mode"] = f"{entry.mode:04o}"
            spec["content"] = entry.data
        else:
            kind = "Symlink"
            spec["target"] = entry.data
        yield {
            "apiVersion": "reconciler/v1",
            "kind": kind,
            "metadata": {"name": _name(rel)},
            "spec": spec,
        }


def resource_ids(desired: Mapping[str, Entry]) -> set[str]:
    kinds = {"dir": "Directory", "file": "File", "link": "Symlink"}
    return {f"{kinds[e.kind]}/{_name(rel)}" for rel, e in desired.items()}


def write_config(config: Path, root: Path, desired: Mapping[str, Entry]) -> None:
    """The manifests of `desired`, ten files of about 100 documents, replacing any."""
    if config.exists():
        shutil.rmtree(config)
    config.mkdir(parents=True)
    # One JSON document per line (JSON is YAML): much faster to write than PyYAML.
    docs = [json.dumps(doc) for doc in manifest_docs(root, desired)]
    per = 100
    for k in range(0, len(docs), per):
        text = "---\n" + "\n---\n".join(docs[k : k + per]) + "\n"
        (config / f"part{k // per:02d}.yaml").write_text(text)


# looking at the tree


def snapshot(root: Path) -> Desired:
    """Everything under `root` (not following links), as entries; anything that is
    not a directory, regular file or symlink becomes a file with a marker."""
    found: Desired = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = Entry("link", data=os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = Entry("dir", mode)
            elif stat.S_ISREG(st.st_mode):
                with open(full, encoding="utf-8", errors="replace") as handle:
                    found[rel] = Entry("file", mode, handle.read())
            else:
                found[rel] = Entry("file", mode, f"<special file {st.st_mode:o}>")
    return found


@dataclass(frozen=True)
class TreeDiff:
    stray: list[str]
    missing: list[str]
    wrong: list[str]

    @property
    def problems(self) -> list[str]:
        return (
            [f"stray (not declared): {p}" for p in self.stray]
            + [f"missing: {p}" for p in self.missing]
            + self.wrong
        )


def compare(found: Mapping[str, Entry], desired: Mapping[str, Entry]) -> TreeDiff:
    wrong = []
    for rel in sorted(desired.keys() & found.keys()):
        want, got = desired[rel], found[rel]
        if want.kind != got.kind:
            wrong.append(f"{rel}: a {got.kind}, expected a {want.kind}")
        elif want.mode is not None and want.mode != got.mode:
            wrong.append(f"{rel}: mode {got.mode:04o}, expected {want.mode:04o}")
        elif want.data != got.data:
            what = "points to " + repr(got.data) if got.kind == "link" else "content differs"
            wrong.append(f"{rel}: {what} ({len(got.data)} chars, expected {len(want.data)})")
    return TreeDiff(
        stray=sorted(found.keys() - desired.keys()),
        missing=sorted(desired.keys() - found.keys()),
        wrong=wrong,
    )


def store_check(state: Path) -> tuple[str, set[str]]:
    """`PRAGMA integrity_check` of the state database and the ids it holds."""
    db = sqlite3.connect(f"file:{state / DB_NAME}?mode=ro", uri=True)
    try:
        integrity = "; ".join(str(row[0]) for row in db.execute("PRAGMA integrity_check"))
        ids = {str(row[0]) for row in db.execute("SELECT id FROM resources")}
    finally:
        db.close()
    return integrity, ids
