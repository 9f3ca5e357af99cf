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
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from reconciler.model import PermanentError

__all__ = [
    "TEMP_SUFFIX",
    "Batch",
    "ConfinementError",
    "Roots",
    "is_temp_name",
    "openat2_available",
]

TEMP_SUFFIX = ".reconciler.tmp"
"""The end of every temporary name this module makes (see `is_temp_name`)."""

_TEMP_NAME = re.compile(r"\..*\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX), re.DOTALL)
_NAME_MAX = 255
_TEMP_PREFIX_MAX = _NAME_MAX - len(".." + "0" * 16 + TEMP_SUFFIX)

_NOT_NAMES = frozenset({"", ".", ".."})
_MAX_CACHED = 128
"""Directory descriptors a batch keeps open (the oldest is closed beyond that)."""

_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at the path must not hang the reader
_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_READ = 1 << 30
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture (new syscalls are unified)

# Temporary names being written by this process right now: a sweep (another
# batch, another thread) must not remove them. Process-wide on purpose: the
# File and Symlink providers have their own Roots and write into the same
# directories concurrently.
_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()


class ConfinementError(PermanentError):
    """A path that cannot be reached without following a symlink, or that lies
    outside every allowed root. `path` is the path asked for; `component` the
    part of it that is a symlink (or the path itself)."""

    def __init__(self, path: str, component: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.component = component


def is_temp_name(name: str) -> bool:
    """Whether a directory entry's name is one of this module's temporary names."""
    return _TEMP_NAME.fullmatch(name) is not None


def _temp_name(name: str) -> str:
    prefix = os.fsencode(name)[:_TEMP_PREFIX_MAX]
    return f".{os.fsdecode(prefix)}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


class _Openat2:
    """openat2(2) of a directory (`_DIR`, beneath, no symlinks) through libc's
    syscall(); `works` turns False for good the first time the kernel (or a
    seccomp filter) says it does not have it."""

    def __init__(self) -> None:
        self.works = True
        resolve = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
        self._how = _OpenHow(_DIR, 0, resolve)  # the same for every call: made once
        self._how_ref = ctypes.byref(self._how)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._syscall = libc.syscall
        except (OSError, AttributeError):
            self.works = False
            return
        self._syscall.restype = ctypes.c_long
        # integer and pointer arguments pass the same way to a variadic function
        self._syscall.argtypes = [
            ctypes.c_long,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]

    def open(self, dir_fd: int, relative: str) -> int:
        size = ctypes.sizeof(_OpenHow)
        fd: int = self._syscall(_SYS_OPENAT2, dir_fd, os.fsencode(relative), self._how_ref, size)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), relative)
        return fd


_openat2 = _Openat2()
_UNAVAILABLE = {errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG, errno.EOPNOTSUPP}
_proc_fd = os.path.isdir("/proc/self/fd")


def openat2_available() -> bool:
    """Whether paths are resolved with openat2 here (else by the component walk)."""
    return _openat2.works


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


class Batch:
    """Calls on paths under the roots that share open directory descriptors.

    Absent objects: `lstat` answers None when the path or one of its parents does
    not exist; the other calls raise FileNotFoundError (an OSError, as do all
    the system's refusals). A symlink on the way, or at the path for the calls
    that would act through it, raises ConfinementError."""

    def __init__(self, roots: Roots) -> None:
        self._roots = roots
        self._dirs: dict[str, int] = {}  # directory at or under a root -> O_PATH descriptor
        self._above: dict[str, int] = {}  # the parents of roots (for a root itself)
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

    # resolution

    def _parent(self, path: str, *, create: bool = False) -> tuple[int, str]:
        """The descriptor of `path`'s parent directory and `path`'s last component."""
        head, _, name = path.rpartition("/")
        fd = self._dirs.get(head)
        if fd is not None and name not in _NOT_NAMES and "\0" not in name:
            return fd, name  # a known directory under a root: any entry of it is too
        root = self._roots.root_of(path)
        if path == root:
            # the root itself: trusted, so its parent is opened as it is
            above, name = os.path.split(os.path.realpath(root))
            if not name:
                raise ConfinementError(path, path, "the filesystem root cannot be changed")
            fd = self._above.get(above)
            if fd is None:
                if create:
                    os.makedirs(above, 0o755, exist_ok=True)
                fd = os.open(above, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                self._above[above] = fd
            return fd, name
        return self._dir(head or "/", create=create, asked=path), name

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

    def _trusted(self, directory: str, create: bool = False, mode: int = 0o755) -> int:
        fd = self._dirs.get(directory)
        if fd is None:
            if create:
                os.makedirs(directory, mode, exist_ok=True)
            fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self._keep(directory, fd)
        return fd

    def _dir(
        self, directory: str, *, create: bool = False, mode: int = 0o755, asked: str = ""
    ) -> int:
        """The descriptor of a directory under a root, opened without following
        a symlink; kept for the rest of the batch. `asked`: the path to name in
        errors (a path in `directory`)."""
        fd = self._dirs.get(directory)
        if fd is not None:
            return fd
        root = self._roots.root_of(directory)
        root_fd = self._trusted(root, create, mode)
        if directory == root:
            return root_fd
        relative = directory[len(root.rstrip("/")) + 1 :]
        if self._roots.use_openat2 and _openat2.works:
            fd = _by_openat2(root_fd, relative, create)
            if fd >= 0:
                self._keep(directory, fd)
                return fd
        return self._walk(root, root_fd, asked or directory, relative, create, mode)

    def _walk(
        self, root: str, root_fd: int, asked: str, relative: str, create: bool, mode: int
    ) -> int:
        """One component at a time, each opened O_NOFOLLOW in the one before and
        kept (siblings share their parents' walk)."""
        current, shown = root_fd, root.rstrip("/")
        for part in relative.split("/"):
            shown = f"{shown}/{part}"
            cached = self._dirs.get(shown)
            if cached is None:
                cached = _step(asked, shown, current, part, create, mode)
                self._keep(shown, cached)
            current = cached
        return current

    @contextmanager
    def _pinned(self, path: str) -> Iterator[int]:
        """An O_PATH descriptor of the object at `path` itself, refused when it is
        a symlink: what it designates is then fixed, whatever is renamed later."""
        parent, name = self._parent(path)
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise _link_error(path, path)
            yield fd
        finally:
            os.close(fd)

    def _keep(self, directory: str, fd: int) -> None:
        if len(self._dirs) >= _MAX_CACHED:
            # the oldest: never one a walk in progress uses (that one is the newest)
            os.close(self._dirs.pop(next(iter(self._dirs))))
        self._dirs[directory] = fd

    def _forget(self, path: str) -> None:
        """Drop cached descriptors of `path` and below (it is removed or renamed)."""
        prefix = path.rstrip("/") + "/"
        for key in [k for k in self._dirs if k == path or k.startswith(prefix)]:
            os.close(self._dirs.pop(key))

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


def _by_openat2(root_fd: int, relative: str, create: bool) -> int:
    """openat2 from the root, or -1 when the walk must answer: to name the
    symlink in an error, to create what is missing, or openat2 is unavailable."""
    for _ in range(8):  # EAGAIN: a concurrent rename somewhere; try again
        try:
            return _openat2.open(root_fd, relative)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                continue
            if exc.errno == errno.ENOENT and not create:
                raise  # (ENOTDIR may be a symlink at the end: the walk names it)
            if exc.errno in _UNAVAILABLE:
                _openat2.works = False
            return -1
    return -1


def _step(asked: str, shown: str, parent: int, part: str, create: bool, mode: int) -> int:
    try:
        return _open_entry(asked, parent, part, _DIR, shown)
    except FileNotFoundError:
        if not create:
            raise
    try:
        os.mkdir(part, mode, dir_fd=parent)
    except FileExistsError:
        pass
    return _open_entry(asked, parent, part, _DIR, shown)


def _open_entry(path: str, parent: int, name: str, flags: int, shown: str | None = None) -> int:
    """Open `name` in `parent` with O_NOFOLLOW; a symlink there is a
    ConfinementError naming it (`shown`, else `path`)."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            raise exc from None
        if stat.S_ISLNK(st.st_mode):
            raise _link_error(path, shown or path) from None
        raise


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


def _claim(temp: str) -> None:
    with _in_flight_lock:
        _in_flight.add(temp)


def _release(temp: str) -> None:
    with _in_flight_lock:
        _in_flight.discard(temp)


def _not_regular(path: str) -> ConfinementError:
    return ConfinementError(path, path, f"{path} is not a regular file; not reading it")


def _link_error(path: str, component: str) -> ConfinementError:
    where = "is a symlink" if component == path else f"goes through the symlink {component}"
    return ConfinementError(
        path,
        component,
        f"{path} {where}; refusing to follow it "
        "(nothing is read, written or changed through a link)",
    )
