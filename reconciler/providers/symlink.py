"""`Symlink`: a symbolic link and its target, stored verbatim (relative or absolute).

The link is replaced atomically (a new link beside it, then rename); a file or a
directory found at the path is reported, never destroyed. The target may point
anywhere: it is stored, never followed (every call goes through
`reconciler.confined`).
"""

from __future__ import annotations

import asyncio
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
    SpecError,
)
from reconciler.providers import _fs


class SymlinkSpec(_fs.PathSpec):
    target: str


class SymlinkProvider(Provider[SymlinkSpec]):
    kind = "Symlink"
    quick_check = True  # observes the lstat, the bytes or the target of its path
    Spec = SymlinkSpec
    summary = "A symbolic link pointing at target (stored verbatim)."

    def prepare(self, spec: SymlinkSpec, ctx: PrepareContext) -> SymlinkSpec:
        _fs.check_path(spec.path, self.settings)
        if not spec.target:
            raise SpecError("target", f"expected a non-empty path, found {spec.target!r}")
        _fs.check_length("target", spec.target)
        return spec

    def describe(self, spec: SymlinkSpec) -> str:
        return f"{spec.path} -> {spec.target}"

    def path(self, spec: SymlinkSpec) -> str | None:
        return spec.path

    def watch(self, specs: Mapping[str, SymlinkSpec]) -> AsyncIterator[str]:
        return _fs.watch({rid: spec.path for rid, spec in specs.items()}, self.settings)

    async def observe_many(self, specs: Sequence[SymlinkSpec]) -> list[Observed | None]:
        return await asyncio.to_thread(
            _observe_all, _fs.roots(self.settings), [s.path for s in specs]
        )

    def plan(self, spec: SymlinkSpec, observed: Observed | None) -> Plan:
        if observed is None:
            return Plan(Action.CREATE, (Change("/target", None, spec.target),))
        if observed["type"] != "symlink":
            return Plan(Action.UPDATE, (Change("/type", observed["type"], "symlink"),))
        if observed["target"] != spec.target:
            return Plan(Action.UPDATE, (Change("/target", observed["target"], spec.target),))
        return NO_CHANGES

    async def apply(self, spec: SymlinkSpec, plan: Plan) -> None:
        [error] = await self.apply_many([(spec, plan)])
        if error is not None:
            raise error

    async def apply_many(
        self, items: Sequence[tuple[SymlinkSpec, Plan]]
    ) -> list[BaseException | None]:
        return await asyncio.to_thread(_fs.apply_each, _apply, items, self.settings)

    async def delete(self, spec: SymlinkSpec) -> None:
        await asyncio.to_thread(_delete, _fs.roots(self.settings), spec.path)


def _observe_all(roots: confined.Roots, paths: list[str]) -> list[Observed | None]:
    observed: list[Observed | None] = []
    with roots.batch() as fs:
        for path in paths:
            st = fs.lstat(path)
            if st is None:
                observed.append(None)
                continue
            seen = _fs.metadata(st)
            if seen["type"] == "symlink":
                try:
                    seen["target"] = fs.readlink(path)
                except FileNotFoundError:
                    observed.append(None)
                    continue
                except OSError as exc:
                    raise _fs.os_error("read link", path, exc) from exc
            observed.append(seen)
    return observed


def _apply(fs: confined.Batch, spec: SymlinkSpec, plan: Plan) -> None:
    path = spec.path
    st = fs.lstat(path)
    if st is not None and (kind := _fs.file_type(st)) != "symlink":
        raise PermanentError(f"{path} is a {kind}; refusing to replace it with a symlink")
    try:
        fs.symlink_atomic(spec.target, path, parents=True)
    except OSError as exc:
        raise _fs.os_error("link", path, exc) from exc


def _delete(roots: confined.Roots, path: str) -> None:
    with roots.batch() as fs:
        st = fs.lstat(path)
        if st is None:
            return
        if _fs.file_type(st) != "symlink":
            raise PermanentError(f"{path} is no longer a symlink; refusing to delete it")
        try:
            fs.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _fs.os_error("delete", path, exc) from exc
