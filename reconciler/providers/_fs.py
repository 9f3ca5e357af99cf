"""What the filesystem providers share: path rules, mode and ownership fields,
and the observation of metadata.

Safety rules, in one place: paths are absolute, lexically normal and inside an
allowed root (checked at load time); before any write the parent's real path is
checked again, so a symlinked directory cannot carry a write outside the roots.
Only symlinks are ever replaced by something else; files and directories found
where another type is wanted are reported, never destroyed.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import stat
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from reconciler.model import (
    Action,
    Change,
    PermanentError,
    Plan,
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
    text = value.strip()
    if not (3 <= len(text) <= 4) or any(c not in "01234567" for c in text):
        raise ValueError(f'expected an octal string such as "0640", found {value!r}')
    return f"{int(text, 8):04o}"


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


def check_path(path: str, settings: ProviderSettings) -> None:
    """Raise SpecError unless `path` is absolute, normal and under an allowed root."""
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


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    """Roots are resolved once per process; the paths under them at every write."""
    return os.path.realpath(root)


def _check_inside_roots(path: str, real: str, settings: ProviderSettings) -> None:
    for root in settings.roots:
        if _under(real, _real_root(root)):
            return
    raise PermanentError(
        f"{path}: resolves to {real}, outside the allowed roots; refusing to write"
    )


def make_parent(path: str, settings: ProviderSettings) -> str:
    """Create the parent directories of `path` (mode 0755) and return the parent.

    The nearest existing ancestor is resolved first, so a symlink planted in the
    path cannot make us create anything outside the allowed roots; the parent is
    resolved again afterwards, closing the window between the two.
    """
    parent = os.path.dirname(path)
    existing = parent
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not any(_under(root, existing) for root in settings.roots):
        # below a root that exists: what exists must resolve inside a root. (Above a
        # root that does not exist yet, everything below `existing` is created by us.)
        _check_inside_roots(path, os.path.realpath(existing), settings)
    if existing != parent:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    _check_inside_roots(path, os.path.realpath(parent), settings)
    return parent


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


def set_metadata(path: str, mode: str | None, owner: str | None, group: str | None) -> None:
    """chmod/chown without following a symlink at `path`; None leaves a field alone."""
    if owner is not None or group is not None:
        os.chown(
            path,
            uid_of(owner) if owner is not None else -1,
            gid_of(group) if group is not None else -1,
            follow_symlinks=False,
        )
    if mode is not None:
        os.chmod(path, int(mode, 8))


def os_error(action: str, path: str, exc: OSError) -> Exception:
    """A provider error that names the action, the path and the system's reason."""
    message = f"{action} {path}: {exc.strerror or exc}"
    if isinstance(exc, PermissionError):
        return TemporaryError(message + " (permission denied: check the daemon's user and --root)")
    return TemporaryError(message)


def apply_each(
    apply: Callable[[Any, Plan, ProviderSettings], None],
    items: Sequence[tuple[Any, Plan]],
    settings: ProviderSettings,
) -> list[BaseException | None]:
    """Apply a batch in one worker thread: one thread hop per batch, not per object;
    each item's failure is its own."""
    results: list[BaseException | None] = []
    for spec, plan in items:
        try:
            apply(spec, plan, settings)
        except Exception as exc:
            results.append(exc)
        else:
            results.append(None)
    return results


async def watch(paths: Mapping[str, str]) -> AsyncIterator[str]:
    """Yield the id (key of `paths`) of every managed path that changes. Watches
    the existing parent directories, not recursively: one inotify watch per
    directory, whatever the number of files in it."""
    import watchfiles  # only the daemon watches

    by_path = {path: rid for rid, path in paths.items()}
    dirs = sorted({os.path.dirname(path) for path in by_path} | set(by_path))
    existing = await asyncio.to_thread(lambda: [d for d in dirs if os.path.isdir(d)])
    if not existing:
        return
    async for changes in watchfiles.awatch(
        *existing, recursive=False, watch_filter=None, debounce=50, step=50
    ):
        for _, path in changes:
            rid = by_path.get(path)
            if rid is not None:
                yield rid


def lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
