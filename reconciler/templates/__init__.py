"""Jinja2 templates of the config tree, rendered in a sandbox with limits.

A template is repository content, and a repository may not be fully trusted
(a pull request run through `plan` in CI), so rendering one must not reach
beyond what it is given: it runs in Jinja2's immutable sandbox (no `_`
attributes, no unsafe calls, no mutation of lists and dicts), with
StrictUndefined and autoescape off; `{% include %}`, `{% import %}` and
`{% extends %}` load only regular files inside the config tree, by names
relative to its top, and never through a symlink that leaves it. Limits bound
what a template can cost: its output, every value it computes on the way, the
time it takes, how deeply its macros nest, and the size of every file it loads
(`TemplateLimits`; decision 0054).

Errors are `SpecError`s whose message starts with the template's `file:line`,
so the revision is rejected whole at load time. When a secret was among the
variables, an error names only the file, line and the cause's class: any other
text could be derived from the secret (decision 0055).


`render` is general: a `File` renders one, and anything else that renders a
named file of the config tree with variables can use it the same way.

The package, one concern a module (this one holds the entry points, `render`
and `resolve_variables`, and turns what went wrong into a `SpecError`):

- `limits`: `TemplateLimits` and the `_Limit` error every part raises;
- `loader`: the loader confined to the config tree, and the cache of compiled
  templates the whole process shares;
- `sandbox`: the immutable sandbox and its checks: deadline, call depth, and
  the size of every value computed (measured, or estimated before one C call);
- `deadline`: a render in a thread of its own, interrupted past its time.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2

from reconciler.model import PrepareContext, Sensitive, SpecError
from reconciler.templates.deadline import _Interrupted, _run_until
from reconciler.templates.limits import DEFAULT_LIMITS, TemplateLimits, _Limit
from reconciler.templates.loader import _TreeLoader
from reconciler.templates.sandbox import _Sandbox

__all__ = ["DEFAULT_LIMITS", "WITHHELD", "TemplateLimits", "render", "resolve_variables"]

WITHHELD = "(details withheld: a secret was in scope)"
"""What an error says instead of its message when a secret was among the variables."""

_MIN_JINJA = (3, 1, 6)
"""3.1.5 fixed a compiler bug reachable through template file names (CVE-2024-56201)
and an indirect `str.format` escape (CVE-2024-56326); 3.1.6 the `|attr` one
(CVE-2025-27516)."""


# variables


def resolve_variables(ctx: PrepareContext, value: Any, where: tuple[str | int, ...]) -> Any:
    """`value` (template variables) with every secret reference replaced by the
    secret, a `Sensitive` string; `where` is its path in the spec, for errors."""
    secret = ctx.secret(value, where)
    if secret is not None:
        return secret
    if isinstance(value, dict):
        return {k: resolve_variables(ctx, v, (*where, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_variables(ctx, v, (*where, i)) for i, v in enumerate(value)]
    return value


def _plain(value: Any, found: list[bool]) -> Any:
    """`value` with Sensitive strings as plain text (Jinja must see the values
    themselves: a Sensitive repr is masked); `found` is set if there was one."""
    if isinstance(value, Sensitive):
        found[0] = True
        return str.__str__(value)
    if isinstance(value, dict):
        return {k: _plain(v, found) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, found) for v in value]
    return value


# rendering


def render(
    ctx: PrepareContext,
    relative: str,
    variables: Mapping[str, Any],
    limits: TemplateLimits | None = None,
    *,
    field: str = "template",
) -> str:
    """The template `relative` (to the manifest) rendered with `variables`.

    Returns a `Sensitive` string when a variable is one (see
    `resolve_variables`). Raises SpecError on `field`: the template missing,
    outside the config tree or too big, a syntax error, a rendering error or a
    limit crossed, each with the template's `file:line`."""
    limits = limits or DEFAULT_LIMITS
    _check_jinja_version(field)
    root = ctx.config_root.resolve()
    name = _name_in_tree(ctx, root, relative, field)
    found = [False]
    plain = {str(k): _plain(v, found) for k, v in variables.items()}
    secret = found[0]
    loader = _TreeLoader(root, limits.template_bytes)
    try:
        loader.get_source(None, name)  # type: ignore[arg-type]
    except jinja2.TemplateNotFound as exc:
        raise SpecError(field, exc.message or f"{relative!r} not found") from None
    except _Limit as exc:
        raise SpecError(field, f"{name}: {exc}") from None
    deadline = time.monotonic() + limits.seconds
    env = _Sandbox(loader, limits, deadline)
    try:
        text = _run_until(deadline, lambda: _generate(env, name, limits, plain))
    except _Interrupted as exc:
        where = _template_line(exc, loader, name)
        message = f"rendering took longer than the limit of {limits.seconds:g} s"
        raise SpecError(field, f"{where}: {message}") from None
    except jinja2.TemplateSyntaxError as exc:
        # the message quotes template source (repository text), never a variable
        where = exc.name or name
        raise SpecError(field, f"{where}:{exc.lineno}: {exc.message}") from None
    except _Limit as exc:
        message = str(exc)
        if not message.startswith(f"{name}:"):  # raised in the template, not at its output
            message = f"{_template_line(exc, loader, name)}: {message}"
        raise SpecError(field, message) from None
    except RecursionError as exc:
        where = _template_line(exc, loader, name)
        raise SpecError(field, f"{where}: nested too deeply (RecursionError)") from None
    except Exception as exc:  # undefined variables, and anything a template raises
        where = _template_line(exc, loader, name)
        kind = type(exc).__name__
        if secret:
            # any message could quote a value derived from the secret: a slice,
            # its reverse, a name made from it. The class says what went wrong.
            raise SpecError(field, f"{where}: {kind} {WITHHELD}") from None
        message = (exc.message if isinstance(exc, jinja2.TemplateError) else str(exc)) or kind
        raise SpecError(field, ctx.mask(f"{where}: {message}")) from None
    return ctx.sensitive(text) if secret else text


def _check_jinja_version(field: str) -> None:
    version = _jinja_version()
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    if parts < _MIN_JINJA:
        wanted = ".".join(map(str, _MIN_JINJA))
        raise SpecError(
            field, f"Jinja2 {version} has known sandbox escapes; templates need {wanted} or later"
        )


@functools.cache
def _jinja_version() -> str:
    return metadata.version("jinja2")


def _name_in_tree(ctx: PrepareContext, root: Path, relative: str, field: str) -> str:
    """The template's name relative to the top of the config tree."""
    if relative.startswith("/"):
        raise SpecError(field, f"expected a path relative to the manifest, found {relative!r}")
    if "\0" in relative:
        raise SpecError(field, f"{relative!r} holds a NUL character")
    manifest_dir = ctx.manifest.parent
    try:
        base = manifest_dir.resolve().relative_to(root).as_posix()
    except ValueError:
        base = os.path.relpath(manifest_dir, ctx.config_root)
    name = os.path.normpath(os.path.join(base, relative))
    if name == ".." or name.startswith("../") or os.path.isabs(name):
        raise SpecError(field, f"{relative!r} points outside the config repository")
    return name


def _generate(
    env: _Sandbox, name: str, limits: TemplateLimits, variables: Mapping[str, Any]
) -> str:
    """Render chunk by chunk, so output over the limit stops the render early."""
    template = env.get_template(name)
    chunks: list[str] = []
    size = 0
    stream = template.generate(variables)
    for chunk in stream:
        size += len(chunk)
        if size > limits.output_bytes:
            message = f"the output is over the limit of {limits.output_bytes} bytes"
            raise _Limit(f"{_stream_line(stream) or name}: {message}")
        chunks.append(chunk)
        env.check_time()
    text = "".join(chunks)
    if len(text.encode("utf-8", "surrogatepass")) > limits.output_bytes:
        raise _Limit(f"{name}: the output is over the limit of {limits.output_bytes} bytes")
    return text


def _stream_line(stream: Any) -> str | None:
    """`file:line` where a paused render stream stands (its innermost template)."""
    where = None
    while stream is not None:
        frame = getattr(stream, "gi_frame", None)
        template = frame.f_globals.get("__jinja_template__") if frame is not None else None
        if frame is not None and template is not None:
            where = f"{template.name}:{template.get_corresponding_lineno(frame.f_lineno)}"
        stream = getattr(stream, "gi_yieldfrom", None)
    return where


def _template_line(exc: BaseException, loader: _TreeLoader, name: str) -> str:
    """`file:line` of the innermost template frame of a rendering error."""
    where = name
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        template = frame.f_globals.get("__jinja_template__")
        if template is not None:  # compiled code: map its line to the template's
            line = template.get_corresponding_lineno(tb.tb_lineno)
            where = f"{template.name}:{line}"
        elif frame.f_code.co_filename in loader.loaded:  # rewritten by Jinja already
            where = f"{frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where
