"""The confined filesystem: every path under the allowed roots, resolved from an
open descriptor of its root without following a symlink in any component.

Providers that touch the local filesystem do it only through this module, so the
promise "a config repository changes the system only inside the roots" is kept by
one mechanism rather than by checks before each call (which a swapped directory
can race). How a path is resolved:

- its root is the longest allowed root it lies under (roots are trusted: given by
  the operator, opened as they are, symlinks and all);
- the directories below the root are opened with `openat2(2)` and
  RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS where the kernel has it (Linux 5.6+), else
  one component at a time with O_NOFOLLOW|O_DIRECTORY relative to the previous
  one; a symlink anywhere on the way is a `ConfinementError`;
- the last component is then worked on with the `*at` calls relative to its
  parent's descriptor, never following it either: a symlink at the path is
  itself read (`readlink`), replaced or unlinked, never read, written,
  chmodded or chowned through.

Writes are atomic (a file is written unnamed with O_TMPFILE where the
filesystem has it, or under a temporary name, then fsync and rename). Temporary
names are recognisable (`.NAME.<16 hex>.reconciler.tmp`), and every directory
in which a batch creates or removes an entry is first swept of the ones a
crashed run left behind (decision 53).

Use one `Batch` (`with roots.batch() as fs:`) per provider call: it keeps the
directory descriptors it opened, so 10,000 files in 100 directories cost about
100 walks. A batch belongs to one thread; `Roots` may be shared.

The package: this module holds the API (`Roots`, and `Batch` with the file
operations: read, write through O_TMPFILE and linkat, chmod/chown, delete, the
sweep); `resolve` the descriptors (openat2, the O_NOFOLLOW walk, the cache a
batch keeps); `temps` the temporary names; `errors` `ConfinementError`.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from reconciler.confined.errors import ConfinementError, _link_error, _not_regular
from reconciler.confined.resolve import (
    _DIR,
    _NOT_NAMES,
    _Descriptors,
    _open_entry,
    openat2_available,
)
from reconciler.confined.resolve import _MAX_CACHED as _MAX_CACHED  # (tests read it)
from reconciler.confined.temps import (
    TEMP_SUFFIX,
    _claim,
    _in_flight,
    _in_flight_lock,
    _release,
    _temp_name,
    is_temp_name,
)

__all__ = [
    "TEMP_SUFFIX",
    "Batch",
    "ConfinementError",
    "Roots",
    "is_temp_name",
    "openat2_available",
]

# O_NONBLOCK: a FIFO planted at the path must not hang the reader
_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_READ = 1 << 30
# read at each call by the operations below, which is why they live in this module:
# tests switch it off on `reconciler.confined` to take the paths without /proc
_proc_fd = os.path.isdir("/proc/self/fd")


class Roots:
    """The allowed roots. Every method is a one-call `Batch`; use `batch()` for
    many calls. `openat2=False` forces the component walk (for tests)."""

    def __init__(self, roots: Iterable[str], *, openat2: bool = True) -> None:
        self.roots = tuple(os.path.normpath(os.path.abspath(r)) for r in roots)
        self.use_openat2 = openat2

    def root_of(self, path: str) -> str:
        """The longest allowed root `path` lies under, or ConfinementError."""
        _check(path)
        under = [r for r in self.roots if path == r or path.startswith(r.rstrip("/") + "/")]
        if not under:
            shown = ", ".join(self.roots) if self.roots else "none given"
            raise ConfinementError(path, path, f"{path} is outside the allowed roots ({shown})")
        return max(under, key=len)

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """A batch of calls sharing open directory descriptors (closed at the end)."""
        batch = Batch(self)
        try:
            yield batch
        finally:
            batch.close()

    def lstat(self, path: str) -> os.stat_result | None:
        with self.batch() as fs:
            return fs.lstat(path)

    def read(self, path: str, limit: int) -> bytes:
        with self.batch() as fs:
            return fs.read(path, limit)

    def open_read(self, path: str) -> io.BufferedReader:
        with self.batch() as fs:
            return fs.open_read(path)

    def readlink(self, path: str) -> str:
        with self.batch() as fs:
            return fs.readlink(path)

    def listdir(self, path: str) -> list[str]:
        with self.batch() as fs:
            return fs.listdir(path)

    def write_atomic(
        self,
        path: str,
        data: bytes,
        mode: int,
        uid: int = -1,
        gid: int = -1,
        *,
        parents: bool = False,
    ) -> None:
        with self.batch() as fs:
            fs.write_atomic(path, data, mode, uid, gid, parents=parents)

    def symlink_atomic(self, target: str, path: str, *, parents: bool = False) -> None:
        with self.batch() as fs:
            fs.symlink_atomic(target, path, parents=parents)

    def mkdir(self, path: str, mode: int = 0o755, *, parents: bool = False) -> None:
        with self.batch() as fs:
            fs.mkdir(path, mode, parents=parents)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        with self.batch() as fs:
            fs.makedirs(path, mode)

    def chmod(self, path: str, mode: int) -> None:
        with self.batch() as fs:
            fs.chmod(path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        with self.batch() as fs:
            fs.chown(path, uid, gid)

    def unlink(self, path: str) -> None:
        with self.batch() as fs:
            fs.unlink(path)

    def rmdir(self, path: str) -> None:
        with self.batch() as fs:
            fs.rmdir(path)

    def rename(self, source: str, destination: str) -> None:
        with self.batch() as fs:
            fs.rename(source, destination)


def _check(path: str) -> None:
    if not path.startswith("/") or "\0" in path or os.path.normpath(path) != path:
        raise ConfinementError(
            path, path, f"expected an absolute, normalized path without NUL, found {path!r}"
        )


class Batch(_Descriptors):
    """Calls on paths under the roots that share open directory descriptors.

    Absent objects: `lstat` answers None when the path or one of its parents does
    not exist; the other calls raise FileNotFoundError (an OSError, as do all
    the system's refusals). A symlink on the way, or at the path for the calls
    that would act through it, raises ConfinementError."""

    def __init__(self, roots: Roots) -> None:
        # every attribute here, the descriptors' too: no super() call per batch
        self._roots = roots
        self._dirs = {}
        self._above = {}
        self._swept: set[str] = set()

    def close(self) -> None:
        dirs, self._dirs = self._dirs, {}
        above, self._above = self._above, {}
        for fd in [*dirs.values(), *above.values()]:
            os.close(fd)

    # observing

    def lstat(self, path: str) -> os.stat_result | None:
        """The path's own status (a symlink is not followed), or None if absent."""
        try:
            # _parent's first lines, inlined: observing is the hot path
            head, _, name = path.rpartition("/")
            parent = self._dirs.get(head, -1)
            if parent < 0 or name in _NOT_NAMES or "\0" in name:
                parent, name = self._parent(path)
            return os.stat(name, dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read(self, path: str, limit: int) -> bytes:
        """At most `limit` bytes of the file at `path`. Only a regular file (or a
        device the host put there) can be read: a FIFO or a socket is refused
        without blocking, and so is a directory."""
        head, _, name = path.rpartition("/")
        parent = self._dirs.get(head, -1)  # _parent's first lines, as in lstat
        if parent < 0 or name in _NOT_NAMES or "\0" in name:
            parent, name = self._parent(path)
        try:
            fd = os.open(name, _READ, dir_fd=parent)
        except OSError:
            fd = _open_entry(path, parent, name, _READ)  # again: it names a symlink
        try:
            # pread, not fstat and read: it refuses what has no offsets (FIFOs,
            # sockets) and directories at no cost (an fstat is 15% of an observe);
            # a short read of a regular file is its end: one call below 1 GiB
            if limit <= _MAX_READ:
                return os.pread(fd, limit, 0)
            chunks = [os.pread(fd, _MAX_READ, 0)]
            left = limit - len(chunks[0])
            while left > 0 and len(chunks[-1]) == _MAX_READ:
                chunks.append(os.pread(fd, min(left, _MAX_READ), limit - left))
                left -= len(chunks[-1])
            return b"".join(chunks)
        except OSError as exc:
            if exc.errno in (errno.ESPIPE, errno.EISDIR):
                raise _not_regular(path) from None
            raise
        finally:
            os.close(fd)

    def open_read(self, path: str) -> io.BufferedReader:
        """The regular file at `path` as a file object to read (and close)."""
        return io.BufferedReader(io.FileIO(self._open_regular(path), "rb"))

    def readlink(self, path: str) -> str:
        """The target of the symlink at `path` (never followed)."""
        parent, name = self._parent(path)
        return os.readlink(name, dir_fd=parent)

    def listdir(self, path: str) -> list[str]:
        """The entries of the directory at `path`."""
        parent, name = self._parent(path)
        fd = _open_entry(path, parent, name, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    # changing

    def write_atomic(
        self,
        path: str,
        data: bytes,
        mode: int,
        uid: int = -1,
        gid: int = -1,
        *,
        parents: bool = False,
    ) -> None:
        """Replace whatever non-directory is at `path` (a symlink included, never
        its target) by a regular file holding `data`, atomically: written
        unnamed or under a temporary name, owned (-1 keeps the process's), moded
        and fsynced before it is renamed into place. `parents` creates missing
        parent directories (0755 less the umask). A failure leaves no temporary
        file and the old object as it was."""
        parent, name = self._changing(path, parents)
        temp = _temp_name(name)
        fd, named = _new_file(parent, temp)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if (uid, gid) != (-1, -1):
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.fsync(fd)
            if not named:
                _claim(temp)
                os.link(f"/proc/self/fd/{fd}", temp, dst_dir_fd=parent, follow_symlinks=True)
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=parent)
            except OSError:
                pass
            raise
        finally:
            os.close(fd)
            _release(temp)

    def symlink_atomic(self, target: str, path: str, *, parents: bool = False) -> None:
        """Make `path` a symlink to `target` (any text: it is stored, never
        resolved), replacing a symlink or file there atomically."""
        parent, name = self._changing(path, parents)
        temp = _temp_name(name)
        _claim(temp)
        try:
            os.symlink(target, temp, dir_fd=parent)
            try:
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                os.unlink(temp, dir_fd=parent)
                raise
        finally:
            _release(temp)

    def mkdir(self, path: str, mode: int = 0o755, *, parents: bool = False) -> None:
        """Create the directory `path` (`mode` less the umask)."""
        parent, name = self._changing(path, parents)
        os.mkdir(name, mode, dir_fd=parent)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        """Create `path` and its missing parents (`mode` less the umask); an
        existing directory is fine."""
        self._dir(path, create=True, mode=mode)

    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of the object at `path` itself (a symlink there
        is refused)."""
        if _proc_fd:
            with self._pinned(path) as fd:
                os.chmod(f"/proc/self/fd/{fd}", mode)
            return
        # no /proc: a descriptor that can fchmod, of a regular file or directory only
        parent, name = self._parent(path)
        fd = _open_entry(path, parent, name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            kind = os.fstat(fd).st_mode
            if not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
                raise ConfinementError(path, path, f"{path} is a special file; not changing it")
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Set the owner and group (-1 keeps one) of the object at `path` itself
        (a symlink there is refused)."""
        if _proc_fd:
            with self._pinned(path) as fd:
                os.chown(f"/proc/self/fd/{fd}", uid, gid)
            return
        parent, name = self._parent(path)
        if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise _link_error(path, path)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)

    def unlink(self, path: str) -> None:
        """Remove the non-directory at `path` (a symlink itself, not its target)."""
        parent, name = self._changing(path)
        os.unlink(name, dir_fd=parent)

    def rmdir(self, path: str) -> None:
        """Remove the directory at `path` once empty; this module's leftover
        temporary files in it do not count (they are removed first)."""
        parent, name = self._changing(path)
        inner = _open_entry(path, parent, name, _DIR)
        try:
            self._sweep(path, inner)
        finally:
            os.close(inner)
        self._forget(path)
        os.rmdir(name, dir_fd=parent)

    def rename(self, source: str, destination: str) -> None:
        """Rename `source` to `destination` (both under the roots; a symlink is
        moved as itself)."""
        src_parent, src_name = self._changing(source)
        dst_parent, dst_name = self._changing(destination)
        self._forget(source)
        self._forget(destination)
        os.rename(src_name, dst_name, src_dir_fd=src_parent, dst_dir_fd=dst_parent)

    def _changing(self, path: str, create: bool = False) -> tuple[int, str]:
        """`_parent`, with the parent swept of leftover temporary files first
        (unless `path` is a root: nothing outside the roots is swept)."""
        parent, name = self._parent(path, create=create)
        if path not in self._roots.roots:
            self._sweep(path.rpartition("/")[0] or "/", parent)
        return parent, name

    def _open_regular(self, path: str) -> int:
        parent, name = self._parent(path)
        fd = _open_entry(path, parent, name, _READ)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _not_regular(path)
        return fd

    def _sweep(self, directory: str, fd: int) -> None:
        """Remove this module's temporary files left in `directory` by a crash,
        once per batch, before anything is created or removed there."""
        if directory in self._swept:
            return
        self._swept.add(directory)
        try:
            listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return  # unreadable: the change itself will say why
        try:
            names = [n for n in os.listdir(listing) if is_temp_name(n)]
        finally:
            os.close(listing)
        for name in names:
            with _in_flight_lock:
                if name in _in_flight:
                    continue
            try:
                os.unlink(name, dir_fd=fd)
            except OSError:
                pass  # gone already, or a directory of that name: not ours


def _new_file(parent: int, temp: str) -> tuple[int, bool]:
    """A new file to fill: unnamed (O_TMPFILE: a crash cannot leave it behind)
    where the filesystem has it, else created as `temp`; and whether it is named."""
    if _proc_fd:
        try:
            return os.open(
                ".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=parent
            ), False
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    _claim(temp)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(temp, flags, 0o600, dir_fd=parent), True
    except BaseException:
        _release(temp)
        raise
