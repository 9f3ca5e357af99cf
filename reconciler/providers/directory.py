"""`Directory`: a directory's existence, mode and ownership; parents are created.

Deleting removes the directory only when it is empty: entries that reconciler
does not manage are never removed with it (its own temporary files left by a
crash are). Every call goes through `reconciler.confined`.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Mapping, Sequence

from reconciler import confined
from reconciler.model import (
    NO_CHANGES,
    Action,
    Change,
    Observed,
    PermanentError,
    Plan,
    PrepareContext,
    Provider,
)
from reconciler.providers import _fs


class DirectorySpec(_fs.PathSpec):
    mode: _fs.Mode | None = None
    owner: _fs.Principal | None = None
    group: _fs.Principal | None = None


class DirectoryProvider(Provider[DirectorySpec]):
    kind = "Directory"
    quick_check = True  # observes the lstat, the bytes or the target of its path
    Spec = DirectorySpec
    summary = "A directory (parents created): mode, owner, group."
    restarts_watches = True  # the watches of what lies in it follow existing directories only

    def prepare(self, spec: DirectorySpec, ctx: PrepareContext) -> DirectorySpec:
        _fs.check_path(spec.path, self.settings)
        return spec

    def describe(self, spec: DirectorySpec) -> str:
        return spec.path

    def path(self, spec: DirectorySpec) -> str | None:
        return spec.path

    def watch(self, specs: Mapping[str, DirectorySpec]) -> AsyncIterator[str]:
        return _fs.watch({rid: spec.path for rid, spec in specs.items()}, self.settings)

    async def observe_many(self, specs: Sequence[DirectorySpec]) -> list[Observed | None]:
        return await asyncio.to_thread(
            _observe_all, _fs.roots(self.settings), [s.path for s in specs]
        )

    def plan(self, spec: DirectorySpec, observed: Observed | None) -> Plan:
        if observed is None:
            changes = [Change("/type", None, "directory")]
            changes += [
                Change(f"/{name}", None, value)
                for name in ("mode", "owner", "group")
                if (value := getattr(spec, name)) is not None
            ]
            return Plan(Action.CREATE, tuple(changes))
        if observed["type"] != "directory":
            return Plan(Action.UPDATE, (Change("/type", observed["type"], "directory"),))
        changes = _fs.metadata_changes(observed, spec.mode, spec.owner, spec.group)
        return Plan(Action.UPDATE, tuple(changes)) if changes else NO_CHANGES

    async def apply(self, spec: DirectorySpec, plan: Plan) -> None:
        [error] = await self.apply_many([(spec, plan)])
        if error is not None:
            raise error

    async def apply_many(
        self, items: Sequence[tuple[DirectorySpec, Plan]]
    ) -> list[BaseException | None]:
        return await asyncio.to_thread(_fs.apply_each, _apply, items, self.settings)

    async def delete(self, spec: DirectorySpec) -> None:
        await asyncio.to_thread(_delete, _fs.roots(self.settings), spec.path)


def _observe_all(roots: confined.Roots, paths: list[str]) -> list[Observed | None]:
    observed: list[Observed | None] = []
    with roots.batch() as fs:
        for path in paths:
            st = fs.lstat(path)
            observed.append(None if st is None else _fs.metadata(st))
    return observed


def _apply(fs: confined.Batch, spec: DirectorySpec, plan: Plan) -> None:
    path = spec.path
    mode, owner, group = (_fs.planned(spec, plan, f) for f in ("mode", "owner", "group"))
    try:
        st = fs.lstat(path)
        if st is not None:
            kind = _fs.file_type(st)
            if kind == "symlink":
                fs.unlink(path)  # the link itself; what it points at is never touched
                st = None
            elif kind != "directory":
                raise PermanentError(f"{path} is a {kind}; refusing to replace it with a directory")
        if st is None:
            fs.mkdir(path, 0o755, parents=True)
            if mode is None:
                fs.chmod(path, 0o755)  # independent of the process umask
        _fs.set_metadata(fs, path, mode, owner, group)
    except OSError as exc:
        verb = "create" if plan.action is Action.CREATE else "update"
        raise _fs.os_error(verb, path, exc) from exc


def _delete(roots: confined.Roots, path: str) -> None:
    with roots.batch() as fs:
        st = fs.lstat(path)
        if st is None:
            return
        if _fs.file_type(st) != "directory":
            raise PermanentError(f"{path} is no longer a directory; refusing to delete it")
        try:
            fs.rmdir(path)
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                left = sorted(fs.listdir(path))
                shown = ", ".join(left[:5]) + (", ..." if len(left) > 5 else "")
                raise PermanentError(
                    f"{path} is not empty ({len(left)} entries not managed here: {shown}); "
                    "remove them or set policy.prune: false"
                ) from None
            raise _fs.os_error("delete", path, exc) from exc
