"""`Symlink`: a symbolic link and its target, stored verbatim (relative or absolute).

The link is replaced atomically (a new link beside it, then rename); a file or a
directory found at the path is reported, never destroyed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence

from reconciler.model import (
    NO_CHANGES,
    Action,
    Change,
    Observed,
    PermanentError,
    Plan,
    PrepareContext,
    Provider,
    ProviderSettings,
    SpecError,
)
from reconciler.providers import _fs


class SymlinkSpec(_fs.PathSpec):
    target: str


class SymlinkProvider(Provider[SymlinkSpec]):
    kind = "Symlink"
    Spec = SymlinkSpec
    summary = "A symbolic link pointing at target (stored verbatim)."

    def prepare(self, spec: SymlinkSpec, ctx: PrepareContext) -> SymlinkSpec:
        _fs.check_path(spec.path, self.settings)
        if not spec.target or "\0" in spec.target:
            raise SpecError("target", f"expected a non-empty path, found {spec.target!r}")
        return spec

    def describe(self, spec: SymlinkSpec) -> str:
        return f"{spec.path} -> {spec.target}"

    def path(self, spec: SymlinkSpec) -> str | None:
        return spec.path

    def watch(self, specs: Mapping[str, SymlinkSpec]) -> AsyncIterator[str]:
        return _fs.watch({rid: spec.path for rid, spec in specs.items()})

    async def observe_many(self, specs: Sequence[SymlinkSpec]) -> list[Observed | None]:
        return await asyncio.to_thread(_observe_all, [s.path for s in specs])

    def plan(self, spec: SymlinkSpec, observed: Observed | None) -> Plan:
        if observed is None:
            return Plan(Action.CREATE, (Change("/target", None, spec.target),))
        if observed["type"] != "symlink":
            return Plan(Action.UPDATE, (Change("/type", observed["type"], "symlink"),))
        if observed["target"] != spec.target:
            return Plan(Action.UPDATE, (Change("/target", observed["target"], spec.target),))
        return NO_CHANGES

    async def apply(self, spec: SymlinkSpec, plan: Plan) -> None:
        await asyncio.to_thread(_apply, spec, plan, self.settings)

    async def apply_many(
        self, items: Sequence[tuple[SymlinkSpec, Plan]]
    ) -> list[BaseException | None]:
        return await asyncio.to_thread(_fs.apply_each, _apply, items, self.settings)

    async def delete(self, spec: SymlinkSpec) -> None:
        await asyncio.to_thread(_delete, spec.path)


def _observe_all(paths: list[str]) -> list[Observed | None]:
    observed: list[Observed | None] = []
    for path in paths:
        st = _fs.lstat_or_none(path)
        if st is None:
            observed.append(None)
            continue
        seen = _fs.metadata(st)
        if seen["type"] == "symlink":
            try:
                seen["target"] = os.readlink(path)
            except FileNotFoundError:
                observed.append(None)
                continue
            except OSError as exc:
                raise _fs.os_error("read link", path, exc) from exc
        observed.append(seen)
    return observed


def _apply(spec: SymlinkSpec, plan: Plan, settings: ProviderSettings) -> None:
    path = spec.path
    st = _fs.lstat_or_none(path)
    if st is not None and (kind := _fs.file_type(st)) != "symlink":
        raise PermanentError(f"{path} is a {kind}; refusing to replace it with a symlink")
    try:
        directory = _fs.make_parent(path, settings)
        temp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        os.symlink(spec.target, temp)
        try:
            os.rename(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError as exc:
        raise _fs.os_error("link", path, exc) from exc


def _delete(path: str) -> None:
    st = _fs.lstat_or_none(path)
    if st is None:
        return
    if _fs.file_type(st) != "symlink":
        raise PermanentError(f"{path} is no longer a symlink; refusing to delete it")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _fs.os_error("delete", path, exc) from exc
