"""The git source's exports: the configured path of one commit written once under
trees/ through `git archive` and a safe tar extraction, the checks of that path,
the commit's summary, and the pruning of old exports. Also the path helpers the
remote bundles and `reconciler.revdiff` share.

Layout (under the source's cache_dir):

    trees/<name>/<path>    the configured path exported at that commit, never modified
    trees/.<name>.path     which path trees/<name> holds (written once it is complete)

`<name>` is the commit id for the git source (`_export_name`; the remote bundles
add a key of the path).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import tempfile
import uuid
from pathlib import Path, PurePosixPath

import git

from reconciler.sources.base import SourceError
from reconciler.sources.gitaccess import GitAccess, _GitFailure

# The git source's logger: operators filter fetch messages by that name (docs/cli.md).
log = logging.getLogger("reconciler.sources.git")

_SUMMARY_MAX = 200


class GitExports(GitAccess):
    """Exports of commits into `cache_dir`/trees; the git source's settings are
    declared here and set by `GitSource.__init__`."""

    cache_dir: Path
    path: str
    """The configured path, normalized ("" for the whole tree)."""
    keep_trees: int

    @property
    def _trees_dir(self) -> Path:
        return self.cache_dir / "trees"

    def _export_name(self, sha: str) -> str:
        """The directory under trees/ holding the export of `sha` (the remote
        bundles' fetcher keys it by path too)."""
        return sha

    def _export(self, cmd: git.Git, sha: str) -> Path:
        """trees/<sha>/<path>, exported once and reused while it exists."""
        trees = self._trees_dir
        trees.mkdir(parents=True, exist_ok=True)
        name = self._export_name(sha)
        final = trees / name
        marker = trees / f".{name}.path"
        target = final / self.path if self.path else final
        if final.is_dir() and _read_text(marker) == self.path:
            os.utime(final)  # most recently used: last to be pruned
            return target
        self._check_path(cmd, sha)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha[:12]}-", dir=trees))
        try:
            with tempfile.TemporaryFile(dir=trees) as archive:
                paths = [self.path] if self.path else []
                self._run(
                    cmd,
                    "export",
                    ["archive", "--format=tar", sha, "--", *paths],
                    output=archive,
                    what=f"commit {sha}",
                )
                archive.seek(0)
                with tarfile.open(fileobj=archive, mode="r:") as tar:
                    extract_tar(tar, tmp)
            (tmp / self.path).mkdir(parents=True, exist_ok=True)
            marker.unlink(missing_ok=True)
            if final.exists():
                # Exported before for another path (config changed): replace it.
                old = trees / f".old-{uuid.uuid4().hex}"
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
            _write_atomically(marker, self.path)
        except (OSError, tarfile.TarError) as error:
            raise _GitFailure(f"export of commit {sha} failed: {error}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _check_path(self, cmd: git.Git, sha: str) -> None:
        if not self.path:
            return
        out = self._run(cmd, "export", ["ls-tree", sha, "--", self.path], what=f"commit {sha}")
        entries = [line.split("\t", 1) for line in out.splitlines() if "\t" in line]
        kinds = [meta.split()[1] for meta, name in entries if name == self.path]
        if not kinds:
            raise SourceError(f"path {self.path!r} does not exist at commit {sha} of {self.url}")
        if kinds[0] != "tree":
            raise SourceError(
                f"path {self.path!r} at commit {sha} of {self.url} is a {kinds[0]}, not a directory"
            )

    def _summary(self, cmd: git.Git, sha: str) -> str:
        message = self._run(cmd, "export", ["log", "-1", "--format=%B", sha], what=f"commit {sha}")
        first = message.strip().splitlines()[0] if message.strip() else ""
        return first.strip()[:_SUMMARY_MAX]

    def _prune_trees(self, keep: str) -> None:
        """Keep the newest `keep_trees` exports (and `keep`); drop leftovers of crashes."""
        trees = self._trees_dir
        exports: list[Path] = []
        for entry in trees.iterdir():
            if entry.name.startswith((".tmp-", ".old-")):
                # We hold the lock, so these belong to an interrupted earlier fetch.
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_dir() and not entry.name.startswith("."):
                exports.append(entry)
        exports.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        survivors = {keep, *(p.name for p in exports[: self.keep_trees])}
        for entry in exports:
            if entry.name not in survivors:
                (trees / f".{entry.name}.path").unlink(missing_ok=True)
                shutil.rmtree(entry, ignore_errors=True)


def normalize_path(path: str) -> str:
    """A relative POSIX path inside the repository; "" for the whole tree."""
    pure = PurePosixPath(path.strip() or ".")
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"path {path!r} must be relative and stay inside the repository")
    normal = "/".join(part for part in pure.parts if part != ".")
    if normal.startswith("-"):
        raise ValueError(f"invalid path {path!r}")
    return normal


_CLEARED_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH
"""Mode bits tarfile's `data` filter clears, and so does the fallback."""


def extract_tar(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract `git archive` output through tarfile's `data` filter. Pythons
    without extraction filters (before 3.11.4; Debian 12 ships 3.11.2) get the
    same rules by hand: members and link targets stay inside `dest`, only files,
    directories and symlinks, no setuid/setgid/sticky or group/other write bits."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter=_safe_member)
        return
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(path)]) == root

    for member in tar.getmembers():
        target = os.path.join(root, member.name)
        if os.path.isabs(member.name) or not inside(target):
            raise tarfile.TarError(f"{member.name!r} would be extracted outside the export")
        if member.issym():
            link = os.path.join(os.path.dirname(target), member.linkname)
            if os.path.isabs(member.linkname) or not inside(link):
                log.warning("git export: skipping %s: its link target leaves the tree", member.name)
                continue
        elif not (member.isfile() or member.isdir()):
            continue
        member.mode &= ~_CLEARED_BITS
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        tar.extract(member, root, set_attrs=not member.issym(), numeric_owner=True)


def _safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's `data` filter, but a symlink leaving the export is skipped, not fatal:
    one bad link should not make the whole revision unreadable."""
    try:
        return tarfile.data_filter(member, dest)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        log.warning("git export: skipping %s: its link target leaves the tree", member.name)
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
