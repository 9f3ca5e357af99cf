"""What the filesystem providers share: path rules, mode and ownership fields,
and the observation of metadata.

Safety rules, in one place: paths are absolute, lexically normal, within the
system's length limits and inside an allowed root (checked at load time); every
call on the filesystem then goes through `reconciler.confined`, which never
follows a symlink in any component of a path, so nothing is read, written,
chmodded, chowned or deleted through a link, whenever it was planted. Only
symlinks are ever replaced by something else; files and directories found where
another type is wanted are reported, never destroyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import stat
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict

from reconciler import confined
from reconciler.model import (
    WATCHING,
    Action,
    Change,
    PermanentError,
    Plan,
    PrepareContext,
    Provider,
    ProviderSettings,
    SpecError,
    TemporaryError,
)


def _mode(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f'expected an octal string such as "0640", found {value!r} '
            "(quote it: YAML reads an unquoted 0640 as the number 416)"
        )
    if not (3 <= len(value) <= 4) or any(c not in "01234567" for c in value):
        raise ValueError(
            f'expected an octal string such as "0640" (3 or 4 digits 0-7, no spaces), '
            f"found {value!r}"
        )
    return f"{int(value, 8):04o}"


def _principal(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected a name or a numeric id, found {value!r}")
    text = str(value).strip()
    if not text:
        raise ValueError("expected a name or a numeric id, found an empty string")
    return text


Mode = Annotated[str, BeforeValidator(_mode)]
Principal = Annotated[str, BeforeValidator(_principal)]


class PathSpec(BaseModel):
    """Fields shared by every filesystem spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str


PATH_MAX = 4096
"""Linux's limit on a path, in bytes, its terminating NUL included."""
NAME_MAX = 255
"""Linux's limit on one component of a path, in bytes."""


def check_length(field: str, path: str) -> None:
    """Raise SpecError for a NUL, or a path the system would refuse as too long."""
    if "\0" in path:
        raise SpecError(field, f"a path cannot contain a NUL character, found {path!r}")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise SpecError(field, f"expected UTF-8 text, found {path!r}") from None
    if size >= PATH_MAX:
        raise SpecError(
            field, f"expected at most {PATH_MAX - 1} bytes (PATH_MAX), found {size} bytes"
        )
    for part in path.split("/"):
        if len(part.encode("utf-8")) > NAME_MAX:
            raise SpecError(
                field,
                f"expected at most {NAME_MAX} bytes in each part of a path (NAME_MAX), "
                f"found {len(part.encode('utf-8'))} bytes in {part[:40]!r}...",
            )


def check_path(path: str, settings: ProviderSettings) -> None:
    """Raise SpecError unless `path` is absolute, normal, within the system's
    length limits and under an allowed root."""
    check_length("path", path)
    if not path.startswith("/"):
        raise SpecError("path", f"expected an absolute path, found {path!r}")
    parts = path.split("/")
    if ".." in parts or "." in parts:
        raise SpecError("path", f"'.' and '..' are not allowed in a path, found {path!r}")
    normal = os.path.normpath(path)
    if normal != path or path == "/":
        raise SpecError("path", f"expected a normalized path such as {normal!r}, found {path!r}")
    if not settings.roots:
        raise SpecError(
            "path", f"{path} is outside the allowed roots (none given: pass --root DIR)"
        )
    if not any(
        normal == root or normal.startswith(root.rstrip("/") + "/") for root in settings.roots
    ):
        raise SpecError(
            "path", f"{path} is outside the allowed roots ({', '.join(settings.roots)})"
        )


@lru_cache(maxsize=16)
def roots(settings: ProviderSettings) -> confined.Roots:
    """The confined filesystem of the settings' roots (one per settings)."""
    return confined.Roots(settings.roots)


PathSpecT = TypeVar("PathSpecT", bound=PathSpec)


class LocalFileProvider(Provider[PathSpecT]):
    """A base for providers of objects that live in one file or directory on the
    local filesystem (`spec.path`): the path is checked against the allowed roots
    at load time, shown in plans, owned for implicit dependencies (a resource
    under a managed Directory waits for it) and watched for instant drift.

    Read and write only through `self.fs()` (a `confined.Batch`: every call is
    resolved beneath a root and never follows a symlink), inside a worker thread
    (`asyncio.to_thread`): the event loop must not block on disk."""

    def prepare(self, spec: PathSpecT, ctx: PrepareContext) -> PathSpecT:
        check_path(spec.path, self.settings)
        return spec

    def describe(self, spec: PathSpecT) -> str:
        return spec.path

    def path(self, spec: PathSpecT) -> str | None:
        """The path this resource owns alone (two resources may not own one path).
        A kind whose objects share a file (keys of one INI file) returns None
        here and names the file's owner in `dependsOn` instead."""
        return spec.path

    def fs(self) -> AbstractContextManager[confined.Batch]:
        """The confined filesystem of the allowed roots, for one batch of calls."""
        return roots(self.settings).batch()

    def watch(self, specs: Mapping[str, PathSpecT]) -> AsyncIterator[str]:
        return watch({rid: spec.path for rid, spec in specs.items()}, self.settings)


@lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@lru_cache(maxsize=256)
def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def uid_of(owner: str) -> int:
    if owner.isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise PermanentError(f"no such user {owner!r}") from None


def gid_of(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise PermanentError(f"no such group {group!r}") from None


def file_type(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def metadata(st: os.stat_result) -> dict[str, Any]:
    """Type, mode and ownership of an lstat result, as observed fields."""
    return {
        "type": file_type(st),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


def metadata_changes(
    observed: dict[str, Any] | Any, mode: str | None, owner: str | None, group: str | None
) -> list[Change]:
    """Changes to mode, owner and group; unset fields are not managed."""
    changes: list[Change] = []
    if mode is not None and observed["mode"] != mode:
        changes.append(Change("/mode", observed["mode"], mode))
    if owner is not None:
        current = str(observed["uid"]) if owner.isdigit() else _user_name(observed["uid"])
        if current != owner:
            changes.append(Change("/owner", current, owner))
    if group is not None:
        current = str(observed["gid"]) if group.isdigit() else _group_name(observed["gid"])
        if current != group:
            changes.append(Change("/group", current, group))
    return changes


def planned(spec: Any, plan: Plan, field: str) -> Any:
    """The spec's value of `field` if the plan changes it (or creates, or replaces
    an object of another type), else None:
    fields a plan leaves out, such as policy.ignoreFields, are left as they are."""
    if plan.action is Action.CREATE or any(c.field in (f"/{field}", "/type") for c in plan.changes):
        return getattr(spec, field)
    return None


def set_metadata(
    fs: confined.Batch, path: str, mode: str | None, owner: str | None, group: str | None
) -> None:
    """chown/chmod of the object at `path` itself (never through a symlink);
    None leaves a field alone."""
    if owner is not None or group is not None:
        fs.chown(
            path,
            uid_of(owner) if owner is not None else -1,
            gid_of(group) if group is not None else -1,
        )
    if mode is not None:
        fs.chmod(path, int(mode, 8))


def os_error(action: str, path: str, exc: OSError) -> Exception:
    """A provider error that names the action, the path and the system's reason."""
    message = f"{action} {path}: {exc.strerror or exc}"
    if isinstance(exc, PermissionError):
        return TemporaryError(message + " (permission denied: check the daemon's user and --root)")
    return TemporaryError(message)


def apply_each(
    apply: Callable[[confined.Batch, Any, Plan], None],
    items: Sequence[tuple[Any, Plan]],
    settings: ProviderSettings,
) -> list[BaseException | None]:
    """Apply a batch in one worker thread and one confined batch: one thread hop
    and one walk per directory per batch, not per object; each item's failure
    is its own."""
    results: list[BaseException | None] = []
    with roots(settings).batch() as fs:
        for spec, plan in items:
            try:
                apply(fs, spec, plan)
            except Exception as exc:
                results.append(exc)
            else:
                results.append(None)
    return results


async def watch(paths: Mapping[str, str], settings: ProviderSettings) -> AsyncIterator[str]:
    """Yield the id (key of `paths`) of every managed path that changes, after
    `WATCHING` once the watch is in place. Watches the existing parent
    directories, not recursively: one inotify watch per directory, whatever the
    number of files in it; only real directories under the roots (none reached
    through a symlink). The watch runs on a thread of its own, which also adds
    the inotify watches (thousands of them take the loop tens of ms)."""
    by_path: dict[str, list[str]] = {}
    for rid, path in paths.items():
        by_path.setdefault(path, []).append(rid)  # several objects may share a file
    dirs = sorted({os.path.dirname(path) for path in by_path} | set(by_path))
    existing = await asyncio.to_thread(_real_directories, dirs, settings)
    if not existing:
        return
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    changes: asyncio.Queue[set[tuple[int, str]] | None] = asyncio.Queue()
    stop = threading.Event()
    threading.Thread(
        target=_watch_thread, args=(existing, loop, ready, changes, stop), name="watch", daemon=True
    ).start()
    try:
        await ready
        yield WATCHING
        while (batch := await changes.get()) is not None:
            for _, path in batch:
                for rid in by_path.get(path, ()):
                    yield rid
    finally:
        stop.set()  # the thread ends within a step (50 ms) and closes its watch


def _watch_thread(
    directories: list[str],
    loop: asyncio.AbstractEventLoop,
    ready: asyncio.Future[None],
    changes: asyncio.Queue[set[tuple[int, str]] | None],
    stop: threading.Event,
) -> None:
    from watchfiles._rust_notify import RustNotify  # only the daemon watches

    def post(call: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
            loop.call_soon_threadsafe(call, *args)

    try:
        notify = RustNotify(directories, False, False, 300, False, False)
    except Exception as exc:  # a directory gone meanwhile, the inotify limits
        post(_settle, ready, exc)
        return
    post(_settle, ready, None)
    with notify:
        while not stop.is_set():
            # debounce 50 ms, step 50 ms, a timeout only to look at `stop` now and then
            found = notify.watch(50, 50, 1000, stop)
            if isinstance(found, set):
                post(changes.put_nowait, found)
            elif found != "timeout":
                break
    post(changes.put_nowait, None)


def _settle(future: asyncio.Future[None], exc: Exception | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


def _real_directories(dirs: Sequence[str], settings: ProviderSettings) -> list[str]:
    found = []
    above = {os.path.dirname(root) for root in settings.roots}  # trusted, as the roots are
    with roots(settings).batch() as fs:
        for directory in dirs:
            if directory in above:
                if os.path.isdir(directory):
                    found.append(directory)
                continue
            try:
                st = fs.lstat(directory)
            except (confined.ConfinementError, OSError):
                continue
            if st is not None and stat.S_ISDIR(st.st_mode):
                found.append(directory)
    return found
