"""The loader of templates confined to the config tree, and the cache of
compiled templates that every render of the process shares."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import CodeType

import jinja2
import jinja2.bccache

from reconciler.templates.limits import _Limit


class _TreeLoader(jinja2.BaseLoader):
    """Regular files under `root`, by `/`-separated names relative to it.

    A name is refused if absolute or with `..`; the file is refused unless the
    path it resolves to (symlinks followed) is inside the tree, both before it
    is opened and, through /proc/self/fd, for the file actually opened, so a
    link swapped in between cannot lead out."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = str(root)
        self.max_bytes = max_bytes
        self.loaded: set[str] = set()
        self._cache: dict[str, str] = {}

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        text = self._cache.get(template)
        if text is None:
            text = self._read(template)
            self._cache[template] = text
        self.loaded.add(template)
        # the file name Jinja compiles with is the name in the tree: what errors show
        return text, template, lambda: True

    def _read(self, name: str) -> str:
        parts = name.split("/")
        if (
            not name
            or name.startswith("/")
            or "\0" in name
            or "\\" in name
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise jinja2.TemplateNotFound(
                name, f"{name!r} is not a name inside the config repository"
            )
        path = os.path.join(self.root, *parts)
        if not self._inside(os.path.realpath(path)):
            raise jinja2.TemplateNotFound(name, f"{name!r} points outside the config repository")
        try:
            # non-blocking: a FIFO must not hang the render; no controlling tty
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            raise jinja2.TemplateNotFound(name, f"{name!r} not found") from None
        try:
            opened = _opened_path(fd)
            if opened is not None and not self._inside(opened):
                raise jinja2.TemplateNotFound(
                    name, f"{name!r} points outside the config repository"
                )
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise jinja2.TemplateNotFound(name, f"{name!r} is not a regular file")
            if st.st_size > self.max_bytes:
                raise _Limit(f"{name} is over the template size limit of {self.max_bytes} bytes")
            data = os.read(fd, self.max_bytes + 1)
        finally:
            os.close(fd)
        if len(data) > self.max_bytes:  # grew after the fstat
            raise _Limit(f"{name} is over the template size limit of {self.max_bytes} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise jinja2.TemplateNotFound(name, f"{name!r} is not UTF-8 text") from None

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip("/") + "/")


def _opened_path(fd: int) -> str | None:
    """Where the descriptor really leads, if the system says (Linux /proc)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class _CompiledTemplates(jinja2.BytecodeCache):
    """Compiled code of templates, by name and source checksum, shared by every
    render of the process: compiling costs more than rendering, and a config
    tree renders the same templates for many files and every revision. The
    code holds no state of a render (it is run in a namespace of its own)."""

    SIZE = 512

    def __init__(self) -> None:
        self._codes: dict[tuple[str, str], CodeType] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = self._codes.get((bucket.key, bucket.checksum))
        if code is not None:
            bucket.code = code

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        if bucket.code is None:
            return
        if len(self._codes) >= self.SIZE:
            self._codes.clear()
        self._codes[(bucket.key, bucket.checksum)] = bucket.code


_COMPILED = _CompiledTemplates()
