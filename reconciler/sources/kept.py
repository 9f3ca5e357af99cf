"""The last good revision's config tree, kept in the state directory.

After a restart whose first revision cannot be used (invalid manifests, an
unsigned commit, a refused mass prune, a fetch that fails), the daemon enforces
the last good revision again instead of nothing (decision 0066). Neither source
can be trusted to still hold it: a git cache is re-cloned shallow when it is
damaged and drops old exports, and a plain directory has no history. So every
revision the daemon converges is kept here:

    STATE_DIR/last-good/<revision id>/     the files a load of it read
    STATE_DIR/last-good/<revision id>/.digest   their tree digest, or "-"

Only what the loader reads is kept (hidden files left out, file links followed),
hard-linked from an immutable git export (not hashed again: the commit id names
it, and hashing 12,000 files beside a pass costs seconds) or copied from a local
directory and checked against its revision's digest, under a temporary name
renamed into place once complete: a crash leaves either the old tree or the new
one. A copied tree is checked against its digest again when it is used. Kept are
the revision just loaded and the one the store names as last applied; older ones
are removed.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from reconciler.manifests import tree_digest, tree_files
from reconciler.sources.base import Revision, SourceError

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DIGEST = ".digest"


class KeptRevisions:
    """The kept trees under `directory` (STATE_DIR/last-good)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def keep(
        self, revision: Revision, *, immutable: bool, expected: str | None = None, keep: str | None
    ) -> Path:
        """Keep the tree of `revision` (blocking: run it in a thread); its path.

        `immutable`: the source tree never changes (a git export), so its files are
        hard-linked, not copied. `expected`: a prefix the tree digest must start
        with (a local directory's revision id is one), else the tree changed while
        it was copied and SourceError is raised. `keep`: another revision id to
        leave in place (the store's last applied one). Raises SourceError."""
        if not _ID.fullmatch(revision.id):
            raise SourceError(f"revision id {revision.id!r} cannot name a kept tree")
        final = self.directory / revision.id
        if (final / _DIGEST).is_file():
            self._prune({revision.id, keep})
            return final
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.directory / f".tmp-{uuid.uuid4().hex}"
        try:
            tmp.mkdir(mode=0o700)
            for file in tree_files(revision.path):
                dest = tmp / file.relative_to(revision.path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if immutable:
                    try:
                        os.link(file, dest, follow_symlinks=True)
                        continue
                    except OSError:  # another file system, or links not allowed
                        pass
                shutil.copyfile(file, dest)
            digest = "-" if immutable else tree_digest(tmp)
            if expected is not None and not digest.startswith(expected):
                raise SourceError(
                    f"{revision.path} changed while it was kept (digest {digest[:12]}, "
                    f"expected {expected[:12]})"
                )
            (tmp / _DIGEST).write_text(digest + "\n")
            if final.exists():  # a half-kept tree of a crash without its digest
                shutil.rmtree(final)
            os.rename(tmp, final)
        except OSError as exc:
            raise SourceError(
                f"cannot keep revision {revision.id} in {self.directory}: {exc}"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune({revision.id, keep})
        return final

    def revision(self, rid: str) -> Revision:
        """The kept tree of revision `rid`, checked against its digest; SourceError
        when it is not kept or does not match (blocking: run it in a thread)."""
        if not _ID.fullmatch(rid):
            raise SourceError(f"revision id {rid!r} cannot name a kept tree")
        path = self.directory / rid
        try:
            recorded = (path / _DIGEST).read_text().strip()
        except FileNotFoundError:
            raise SourceError(f"revision {rid} is not kept in {self.directory}") from None
        except OSError as exc:
            raise SourceError(f"cannot read the kept revision {path}: {exc.strerror}") from None
        if recorded == "-":  # linked from an immutable export: complete once marked
            return Revision(id=rid, path=path, summary="last good revision, as kept")
        try:
            digest = tree_digest(path)
        except OSError as exc:
            raise SourceError(f"cannot read the kept revision {path}: {exc.strerror}") from None
        if digest != recorded:
            raise SourceError(
                f"the kept revision {path} does not match its digest "
                f"(found {digest[:12]}, recorded {recorded[:12]})"
            )
        return Revision(id=rid, path=path, summary="last good revision, as kept")

    def _prune(self, keep: set[str | None]) -> None:
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.name not in keep:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
