"""`File`: a regular file's content, mode and ownership.

Content comes from exactly one of `content` (inline), `source` (a file of the
config tree) or `template` (a Jinja2 template of the config tree, rendered with
`vars` and StrictUndefined). Sources and templates are resolved at load time, so
a missing file or a template error rejects the revision before anything runs.

Secrets: `content` may be a secret reference (`{valueFrom: {env: NAME}}` or
`{valueFrom: {file: /path}}`, the whole file as content), and so may any value
in `vars`, at any depth. A file made from a secret is sensitive: its content is
never shown in a plan, and its stored spec holds a keyed digest instead.
Writes are atomic: an unnamed (or temporary) file in the target's directory,
fsync, rename; a symlink at the path is replaced, never written through. Every
call on the filesystem goes through `reconciler.confined`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo, model_validator

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
    Sensitive,
    SensitiveStr,
    SpecError,
    is_prepared,
)
from reconciler.providers import _fs

MAX_SHOWN = 1024 * 1024
"""Files up to this size are read and compared as text (and shown in diffs);
larger ones are compared by SHA-256 digest only."""


def _text_or_ref(value: Any) -> Any:
    if value is None or isinstance(value, str | dict):
        return value  # a reference is checked (and resolved) by prepare
    raise ValueError(
        "expected text or a secret reference such as {valueFrom: {env: NAME}}, "
        f"found {type(value).__name__}"
    )


class FileSpec(_fs.PathSpec):
    content: Annotated[SensitiveStr | dict[str, Any] | None, BeforeValidator(_text_or_ref)] = None
    source: str | None = None
    template: str | None = None
    vars: dict[str, Any] | None = None
    mode: _fs.Mode | None = None
    owner: _fs.Principal | None = None
    group: _fs.Principal | None = None

    @model_validator(mode="after")
    def _one_origin(self, info: ValidationInfo) -> FileSpec:
        if is_prepared(info):  # prepare() filled content in beside source/template
            return self
        given = [n for n in ("content", "source", "template") if getattr(self, n) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"expected exactly one of content, source, template; found {found}")
        if self.vars is not None and self.template is None:
            raise ValueError("vars is only used with template")
        return self

    @property
    def text(self) -> str:
        """The content to write (prepared: sources, templates and secrets resolved)."""
        return self.content if isinstance(self.content, str) else ""

    @property
    def sensitive(self) -> bool:
        """Whether the content is made from a secret and must never be shown."""
        return isinstance(self.content, Sensitive)


def _inside(ctx: PrepareContext, field: str, relative: str) -> Path:
    """A file named relative to the manifest, which must stay inside the config tree."""
    if relative.startswith("/"):
        raise SpecError(field, f"expected a path relative to the manifest, found {relative!r}")
    target = (ctx.manifest.parent / relative).resolve()
    root = ctx.config_root.resolve()
    if target != root and root not in target.parents:
        raise SpecError(field, f"{relative!r} points outside the config repository")
    if not target.is_file():
        raise SpecError(field, f"{relative!r} not found (looked for {target})")
    return target


def _read_text(path: Path, field: str, relative: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(field, f"{relative!r} is not UTF-8 text") from None
    except OSError as exc:
        raise SpecError(field, f"cannot read {relative!r}: {exc.strerror}") from None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileProvider(Provider[FileSpec]):
    kind = "File"
    quick_check = True  # observes the lstat, the bytes or the target of its path
    Spec = FileSpec
    summary = "A regular file: content (inline, source or Jinja2 template), mode, owner, group."

    def prepare(self, spec: FileSpec, ctx: PrepareContext) -> FileSpec:
        _fs.check_path(spec.path, self.settings)
        text: str
        if spec.source is not None:
            text = _read_text(_inside(ctx, "source", spec.source), "source", spec.source)
        elif spec.template is not None:
            from reconciler import templates  # only manifests with templates pay for Jinja2

            variables = templates.resolve_variables(ctx, spec.vars or {}, ("vars",))
            text = templates.render(ctx, spec.template, variables)  # Sensitive if vars are
        elif isinstance(spec.content, dict):
            secret = ctx.secret(spec.content, ("content",), whole_file=True)
            if secret is None:
                raise SpecError(
                    "content",
                    "expected text or a secret reference "
                    "{valueFrom: {env: NAME}} or {valueFrom: {file: /path}}",
                )
            text = secret
        else:
            return spec
        return spec.model_copy(update={"content": text})

    def describe(self, spec: FileSpec) -> str:
        return spec.path

    def path(self, spec: FileSpec) -> str | None:
        return spec.path

    def watch(self, specs: Mapping[str, FileSpec]) -> AsyncIterator[str]:
        return _fs.watch({rid: spec.path for rid, spec in specs.items()}, self.settings)

    async def observe_many(self, specs: Sequence[FileSpec]) -> list[Observed | None]:
        paths = [s.path for s in specs]
        return await asyncio.to_thread(_observe_all, _fs.roots(self.settings), paths)

    def plan(self, spec: FileSpec, observed: Observed | None) -> Plan:
        content = spec.text
        sensitive = spec.sensitive
        if observed is None:
            changes = [
                Change.masked("/content", absent=True)
                if sensitive
                else Change("/content", None, content)
            ]
            changes += [
                Change(f"/{name}", None, value)
                for name in ("mode", "owner", "group")
                if (value := getattr(spec, name)) is not None
            ]
            return Plan(Action.CREATE, tuple(changes))
        if observed["type"] != "file":
            return Plan(Action.UPDATE, (Change("/type", observed["type"], "file"),))
        changes = []
        seen = observed["content"]
        if seen is not None and not observed["binary"]:
            same = seen == content
        else:
            same = observed["sha256"] == _digest(content.encode())
        if not same:
            changes.append(
                Change.masked("/content") if sensitive else Change("/content", seen, content)
            )
        changes += _fs.metadata_changes(observed, spec.mode, spec.owner, spec.group)
        return Plan(Action.UPDATE, tuple(changes)) if changes else NO_CHANGES

    async def apply(self, spec: FileSpec, plan: Plan) -> None:
        [error] = await self.apply_many([(spec, plan)])
        if error is not None:
            raise error

    async def apply_many(
        self, items: Sequence[tuple[FileSpec, Plan]]
    ) -> list[BaseException | None]:
        return await asyncio.to_thread(_fs.apply_each, _apply, items, self.settings)

    async def delete(self, spec: FileSpec) -> None:
        await asyncio.to_thread(_delete, _fs.roots(self.settings), spec.path)


def _observe_all(roots: confined.Roots, paths: list[str]) -> list[Observed | None]:
    with roots.batch() as fs:
        return [_observe(fs, path) for path in paths]


def _observe(fs: confined.Batch, path: str) -> Observed | None:
    st = fs.lstat(path)
    if st is None:
        return None
    observed = _fs.metadata(st)
    if observed["type"] != "file":
        return observed
    observed["content"], observed["sha256"], observed["binary"] = None, None, False
    try:
        if st.st_size > MAX_SHOWN:
            with fs.open_read(path) as handle:
                observed["sha256"] = hashlib.file_digest(handle, "sha256").hexdigest()
            return observed
        # sized by the lstat: a 1 MiB read buffer per small file costs more than the I/O
        data = fs.read(path, st.st_size + 1)
    except OSError as exc:
        raise _fs.os_error("read", path, exc) from exc
    if len(data) > st.st_size:  # changed while we looked: report it as unknown content
        observed["sha256"] = _digest(data)
        return observed
    try:
        observed["content"] = data.decode()
    except UnicodeDecodeError:
        observed["content"] = data.decode("utf-8", "replace")
        observed["binary"] = True
        observed["sha256"] = _digest(data)
    return observed


def _apply(fs: confined.Batch, spec: FileSpec, plan: Plan) -> None:
    path = spec.path
    fields = {c.field for c in plan.changes}
    if "/type" in fields:
        st = fs.lstat(path)
        if st is not None and _fs.file_type(st) == "directory":
            raise PermanentError(f"{path} is a directory; refusing to replace it with a file")
        if st is not None and _fs.file_type(st) not in ("symlink", "file"):
            raise PermanentError(f"{path} is a special file; refusing to replace it")
    mode, owner, group = (_fs.planned(spec, plan, f) for f in ("mode", "owner", "group"))
    try:
        if plan.action is Action.CREATE or fields & {"/type", "/content"}:
            _write(fs, spec, mode, owner, group)
        else:
            _fs.set_metadata(fs, path, mode, owner, group)
    except OSError as exc:
        raise _fs.os_error("write", path, exc) from exc


def _write(
    fs: confined.Batch, spec: FileSpec, mode: str | None, owner: str | None, group: str | None
) -> None:
    """Write the file atomically. Metadata the plan does not change is carried
    over from the file being replaced (its owner only where we may give it)."""
    path = spec.path
    st = fs.lstat(path)
    old = st if st is not None and _fs.file_type(st) == "file" else None
    if mode is None:
        # a file made from a secret is private unless its spec says otherwise
        new_mode = "0600" if spec.sensitive else "0644"
        mode = f"{old.st_mode & 0o7777:04o}" if old is not None else (spec.mode or new_mode)
    uid = _fs.uid_of(owner) if owner is not None else (old.st_uid if old is not None else -1)
    gid = _fs.gid_of(group) if group is not None else (old.st_gid if old is not None else -1)
    data = spec.text.encode()
    try:
        fs.write_atomic(path, data, int(mode, 8), uid, gid, parents=True)
    except PermissionError:
        if owner is not None or group is not None or (uid, gid) == (-1, -1):
            raise  # asked for, or not about ownership: an error
        # only carrying the owner over: best effort
        fs.write_atomic(path, data, int(mode, 8), parents=True)


def _delete(roots: confined.Roots, path: str) -> None:
    with roots.batch() as fs:
        st = fs.lstat(path)
        if st is None:
            return
        if _fs.file_type(st) == "directory":
            raise PermanentError(f"{path} is now a directory; refusing to delete it as a file")
        try:
            fs.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _fs.os_error("delete", path, exc) from exc
