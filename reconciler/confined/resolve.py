"""Resolution beneath a root's descriptor: a directory under a root opened with
openat2(2) (RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) where the kernel has it, else
one component at a time with O_NOFOLLOW; and the descriptors a batch keeps, so
siblings share their parents' walk."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from reconciler.confined.errors import ConfinementError, _link_error

if TYPE_CHECKING:
    from reconciler.confined import Roots

_NOT_NAMES = frozenset({"", ".", ".."})
_MAX_CACHED = 128
"""Directory descriptors a batch keeps open (the oldest is closed beyond that)."""

_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture (new syscalls are unified)


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


def openat2_available() -> bool:
    """Whether paths are resolved with openat2 here (else by the component walk)."""
    return _openat2.works


class _Descriptors:
    """The directory descriptors of a `Batch` and how they are found: a path's
    parent opened without following a symlink, kept for the rest of the batch
    (at most `_MAX_CACHED`). `Batch` sets the attributes."""

    _roots: Roots
    _dirs: dict[str, int]  # directory at or under a root -> O_PATH descriptor
    _above: dict[str, int]  # the parents of roots (for a root itself)

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
