"""Reading a config tree: the walk (hidden files skipped, links kept inside the
tree), the bytes of every manifest within the limits, the digests of the tree
(the revision, the cache key) and the bundle directories, whose files are read
only when a `Bundle` instantiates them."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from reconciler.manifests.issues import Issue, ManifestError
from reconciler.manifests.limits import _NO_LIMITS, Limits


def manifest_files(root: Path) -> list[Path]:
    """The manifests of a config tree, in the order they are loaded."""
    return [p for p in tree_files(root) if p.suffix in (".yaml", ".yml")]


@dataclass(frozen=True, slots=True)
class _File:
    path: Path
    shown: str
    raw: bytes | None
    """Bytes of a manifest; None for other files (hashed, not kept) and errors."""
    problem: str | None = None
    digest: bytes = b""


@dataclass
class _Walk:
    """The files of a tree, found without following a link out of it."""

    root: Path
    limits: Limits
    files: list[tuple[Path, os.stat_result]] = dataclasses.field(default_factory=list)
    problems: list[_File] = dataclasses.field(default_factory=list)
    total: int = 0

    def walk(self, top: Path) -> None:
        limits = self.limits
        pending = [top]
        while pending:
            directory = pending.pop()
            try:
                with os.scandir(directory) as entries:
                    listed = list(entries)
            except OSError:
                continue  # unreadable directory: nothing of it can be loaded
            for entry in listed:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                    continue
                try:
                    st = os.stat(path)  # a link to a file is read as the file ...
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if entry.is_symlink() and not self._inside(path):
                    # ... but only inside the tree: never a file of the host
                    if path.suffix in (".yaml", ".yml"):
                        problem = "a symbolic link to outside the config tree; not read"
                        self.problems.append(_File(path, self._shown(path), None, problem))
                    continue
                self.files.append((path, st))
                self.total += st.st_size
                if len(self.files) > limits.max_files:
                    raise self._over(path, f"over {limits.max_files} files (max_files)")
                if self.total > limits.max_tree_bytes:
                    raise self._over(
                        path, f"the tree is over {limits.max_tree_bytes} bytes (max_tree_bytes)"
                    )

    def _inside(self, path: Path) -> bool:
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        root = self.root.resolve()
        return target == root or root in target.parents

    def _shown(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path != self.root else path.name

    def _over(self, path: Path, problem: str) -> ManifestError:
        return ManifestError([Issue(self._shown(path), None, "", problem)])


def _walk(path: Path, root: Path, limits: Limits) -> _Walk:
    """The files of the tree at `path` (or the file itself); raises ManifestError
    past `max_files` or `max_tree_bytes`."""
    walk = _Walk(root, limits)
    if path.is_dir():
        walk.walk(path)
    else:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
            walk.problems.append(_File(path, path.name, None, "not a regular file"))
        else:
            walk.files.append((path, st))
            walk.total = st.st_size
    walk.files.sort(key=lambda item: item[0])
    return walk


def tree_files(root: Path) -> list[Path]:
    """Every file of a config tree in a stable order; hidden files and directories
    (such as .git), and links to files outside the tree, skipped. Manifests are
    the `*.yaml`/`*.yml` among them."""
    base = root if root.is_dir() else root.parent
    return [p for p, _ in _walk(root, base, _NO_LIMITS).files]


def _read_tree(path: Path, root: Path, limits: Limits) -> tuple[list[_File], str, str]:
    """Every file of the tree (manifests read, others hashed), the tree digest and
    the digest of the non-manifest files (sources, templates) alone."""
    digest = hashlib.sha256()
    others = hashlib.sha256()
    walk = _walk(path, root, limits)
    files = list(walk.problems)
    bundled = _bundle_dirs(path, walk.files)
    for file, st in walk.files:
        shown = str(file.relative_to(root)) if file != root else file.name
        manifest = file == path or (
            file.suffix in (".yaml", ".yml") and not (bundled and _in_bundle(file, path, bundled))
        )
        if st.st_size > limits.max_file_bytes:
            problem = (
                f"file is {st.st_size} bytes, over the limit of {limits.max_file_bytes} "
                "(max_file_bytes)"
            )
            files.append(_File(file, shown, None, problem))
            continue
        try:
            with file.open("rb") as handle:
                if not manifest:
                    file_hash = hashlib.file_digest(handle, "sha256").digest()
                    digest.update(shown.encode() + b"\0" + file_hash)
                    others.update(shown.encode() + b"\0" + file_hash)
                    continue
                raw = _read_at_most(handle, st.st_size, limits.max_file_bytes)
        except OSError as exc:
            if manifest:  # other files matter only when referenced; prepare says so
                files.append(_File(file, shown, None, f"cannot read: {exc.strerror}"))
            continue
        if len(raw) > limits.max_file_bytes:
            problem = f"file is over the limit of {limits.max_file_bytes} bytes (max_file_bytes)"
            files.append(_File(file, shown, None, problem))
            continue
        file_hash = hashlib.sha256(raw).digest()
        digest.update(shown.encode() + b"\0" + file_hash)
        files.append(_File(file, shown, raw, digest=file_hash))
    return files, digest.hexdigest(), others.hexdigest()


def _bundle_dirs(path: Path, files: list[tuple[Path, os.stat_result]]) -> set[Path]:
    """The bundle directories (holding a bundle.yaml) strictly below `path`: their
    files are read only when a `Bundle` instantiates them (hashed all the same)."""
    return {f.parent for f, _ in files if f.name == "bundle.yaml" and f.parent != path}


def _in_bundle(file: Path, top: Path, bundled: set[Path]) -> bool:
    for parent in file.parents:
        if parent == top:
            return False
        if parent in bundled:
            return True
    return False


def _read_at_most(handle: BinaryIO, size: int, limit: int) -> bytes:
    """The file's bytes, or more than `limit` of them if it has more: read as
    `size` (its size when listed) and beyond, in case it has grown since."""
    data = handle.read(size + 1)
    if len(data) <= size:
        return data
    chunks = [data]
    total = len(data)
    while total <= limit:
        chunk = handle.read(min(1 << 20, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def tree_digest(path: Path) -> str:
    """The digest a load of `path` would use as its revision (all files' bytes)."""
    root = path if path.is_dir() else path.parent
    digest = hashlib.sha256()
    for file, _ in _walk(path, root, _NO_LIMITS).files:  # streamed: nothing is kept
        shown = str(file.relative_to(root)) if file != root else file.name
        try:
            with file.open("rb") as handle:
                file_hash = hashlib.file_digest(handle, "sha256").digest()
        except OSError:
            continue  # as a load leaves it out (and reports it)
        digest.update(shown.encode() + b"\0" + file_hash)
    return digest.hexdigest()
