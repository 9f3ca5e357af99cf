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
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import CodeType, TracebackType
from typing import Any

import jinja2
import jinja2.bccache
import jinja2.compiler
import jinja2.nodes
import jinja2.runtime
import jinja2.sandbox

from reconciler.model import PrepareContext, Sensitive, SpecError

__all__ = ["DEFAULT_LIMITS", "WITHHELD", "TemplateLimits", "render", "resolve_variables"]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TemplateLimits:
    """What one render may cost. Crossing any limit is an error naming it."""

    output_bytes: int = 8 * MIB
    """Rendered output (UTF-8), and any single value computed on the way."""
    seconds: float = 5.0
    """Wall-clock time of loading, compiling and rendering."""
    template_bytes: int = 1 * MIB
    """Each template file loaded: the one named and every include, import, extends."""
    depth: int = 100
    """Calls (macros, `caller()`, methods) nested in one another."""
    work_factor: int = 8
    """All values computed by calls, filters and operators together: this many
    times `output_bytes`. Bounds what a template can keep alive at once."""


DEFAULT_LIMITS = TemplateLimits()

WITHHELD = "(details withheld: a secret was in scope)"
"""What an error says instead of its message when a secret was among the variables."""

_MIN_JINJA = (3, 1, 6)
"""3.1.5 fixed a compiler bug reachable through template file names (CVE-2024-56201)
and an indirect `str.format` escape (CVE-2024-56326); 3.1.6 the `|attr` one
(CVE-2025-27516)."""

_INT_BITS = 65536
"""Largest integer a template may compute (bits): enough for any port or size,
far below what makes multiplication or `str()` slow."""

_HOOKS_GRACE = 0.1
"""Seconds a render past its time gets to reach a hook of the sandbox (and stop)."""
_GRACE = 1.0
"""Seconds a render past its time gets to unwind after being interrupted."""


class _Limit(Exception):
    """A limit crossed. Its message is fixed text and figures, never input."""


class _Interrupted(BaseException):
    """Raised asynchronously in a render thread past its deadline. A BaseException,
    so no `except Exception` inside Jinja swallows it."""


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


def _run_until(deadline: float, work: Callable[[], str]) -> str:
    """`work()` in a thread of its own, interrupted if it runs past `deadline`.

    The sandbox's hooks check the deadline at every call, attribute, operator
    and output chunk and stop the render themselves; a loop that reaches none
    of them (nested `for` over ranges with an empty body) is stopped by an
    exception the interpreter raises in the thread (PyThreadState_SetAsyncExc).
    It is raised only while `work` runs and caught in the thread; one that lands
    in a callback (a weakref's, where exceptions are ignored) is raised again.
    A thread stuck inside one C call past the grace period is left to finish on
    its own (a daemon thread), and the render is reported as too slow anyway."""
    outcome: list[tuple[bool, Any]] = []
    lock = threading.Lock()
    running = [False]

    def inner() -> None:
        with lock:
            running[0] = True
        try:
            outcome.append((True, work()))
        finally:
            with lock:
                running[0] = False
                _raise_in(threading.get_ident(), None)  # one that came too late

    def target() -> None:
        try:
            inner()
        except BaseException as exc:  # delivered to the caller below
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name="template-render", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        thread.join(_HOOKS_GRACE)  # most renders stop at their next hook
    if thread.is_alive():
        _interrupt(thread, lock, running)
        if thread.is_alive() or not outcome:
            raise _Interrupted
    ok, value = outcome[-1]
    if ok:
        return str(value)
    raise value


def _interrupt(thread: threading.Thread, lock: threading.Lock, running: list[bool]) -> None:
    previous = sys.unraisablehook

    def ignore_interrupts(unraisable: Any) -> None:
        if unraisable.exc_type is not _Interrupted:
            previous(unraisable)

    sys.unraisablehook = ignore_interrupts
    try:
        give_up = time.monotonic() + _GRACE
        while thread.is_alive() and time.monotonic() < give_up:
            with lock:
                if running[0]:
                    _raise_in(thread.ident or 0, _Interrupted)
            thread.join(0.05)
    finally:
        if sys.unraisablehook is ignore_interrupts:
            sys.unraisablehook = previous


def _raise_in(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise `exc_type` in thread `ident` at its next bytecode boundary (None:
    drop one pending)."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), exc)


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


# loading


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


# the sandbox


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


class _CodeGenerator(jinja2.compiler.CodeGenerator):
    """Compiles `a ~ b` to a call of the environment, so concatenation is
    measured like every other operation (Jinja joins it inline)."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: jinja2.compiler.Frame) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_BOUNDED_STR_METHODS = frozenset(
    [
        "capitalize",
        "casefold",
        "count",
        "encode",
        "endswith",
        "find",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "isidentifier",
        "islower",
        "isnumeric",
        "isprintable",
        "isspace",
        "istitle",
        "isupper",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "rfind",
        "rindex",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
    ]
)
"""`str` methods whose result is at most a few times the string itself."""

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")
_NUMBER = re.compile(r"\d+")


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a deadline, a call depth, and a size check on
    every value the template computes through a call, filter or operator."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(["*", "**", "%", "+", "//"])

    def __init__(self, loader: _TreeLoader, limits: TemplateLimits, deadline: float) -> None:
        self.limits = limits
        self.deadline = deadline
        self.cap = limits.output_bytes
        self.work_left = limits.output_bytes * limits.work_factor
        self.depth = 0
        super().__init__(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
            finalize=self._finalize,
            auto_reload=False,
            bytecode_cache=_COMPILED,
        )
        del self.globals["lipsum"]  # a generator of any amount of text, for no config
        self.concat = self._concat  # type: ignore[method-assign,assignment]
        self.filters = {name: self._checked_filter(name, f) for name, f in self.filters.items()}

    # time and depth

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Limit(f"rendering took longer than the limit of {self.limits.seconds:g} s")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self.check_time()
        __self._check_arguments(args, kwargs)
        __self._estimate_call(__obj, args)
        if __self.depth >= __self.limits.depth:
            raise _Limit(f"calls nested deeper than the limit of {__self.limits.depth}")
        __self.depth += 1
        try:
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            __self.depth -= 1
        return __self._produced(result)

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.check_time()
        value = super().getitem(obj, argument)
        return self._produced(value) if isinstance(argument, slice) else value

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map` through a formatter that also measures
        each field as it is made (the sandbox's own checks only attributes)."""
        if super().wrap_str_format(value) is None:
            return None
        template = str.__str__(value.__self__)
        is_map = value.__name__ == "format_map"
        env = self

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs = args[0]
                args = ()
            return str(env._produced(_BoundedFormatter(env).vformat(template, args, kwargs)))

        return wrapper

    # sizes

    def _produced(self, value: Any) -> Any:
        """`value`, made by the template, if within the size limits."""
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > _INT_BITS:
                raise _Limit(f"an integer is over the limit of {_INT_BITS} bits")
            return value
        size = _weight(value, self.cap)
        if size > self.cap:
            raise _Limit(f"a value the template computes is over the limit of {self.cap} bytes")
        self.work_left -= size
        if self.work_left < 0:
            total = self.limits.output_bytes * self.limits.work_factor
            raise _Limit(f"the template computed more than the limit of {total} bytes of values")
        return value

    def _need(self, size: int) -> None:
        if size > self.cap:
            raise _Limit(f"a value the template computes is over the limit of {self.cap} bytes")

    def _check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > self.cap:
                raise _Limit(f"a number passed to a call is over the limit of {self.cap}")

    def _estimate_call(self, obj: Any, args: tuple[Any, ...]) -> None:
        """Refuse a `str` method call whose result could be far bigger than its
        inputs before it is made: its allocation happens in one C call."""
        owner = getattr(obj, "__self__", None)
        if not isinstance(owner, str) or not callable(obj):
            return
        method = getattr(obj, "__name__", "")
        if method in _BOUNDED_STR_METHODS:
            return
        self._need(_str_method_size(owner, method, args, self.cap))

    def _finalize(self, value: Any) -> Any:
        """Before `{{ value }}` becomes text: a structure printed whole (its repr)
        is as big as its weight."""
        self.check_time()
        self._need(_weight(value, self.cap))
        return value

    def _concat(self, parts: Iterator[str]) -> str:
        """Joins a block's output (macros, `{% set %}` blocks, filter blocks)."""
        pieces = list(parts)
        self._need(sum(len(p) for p in pieces))
        return "".join(pieces)

    def checked_concat(self, values: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`."""
        self.check_time()
        self._need(sum(_weight(v, self.cap) for v in values))
        return str(self._produced("".join(map(str, values))))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.check_time()
        if operator == "*":
            _estimate_multiply(self, left, right)
        elif operator == "**":
            _estimate_power(left, right)
        elif operator == "%" and isinstance(left, str):
            self._need(_percent_size(left, right, self.cap))
        return self._produced(self.binop_table[operator](left, right))

    def _checked_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        env = self

        def checked(*args: Any, **kwargs: Any) -> Any:
            env.check_time()
            env._check_arguments(args, kwargs)
            value, rest = _filter_arguments(args)
            if name in _AMPLIFYING_FILTERS:
                env._need(_filter_size(name, value, rest, kwargs, env.cap))
            result = func(*args, **kwargs)
            return result if result is value else env._produced(result)

        # keeps `jinja_pass_arg` (context, eval context, environment) and the name
        checked.__dict__.update(getattr(func, "__dict__", {}))
        checked.__name__ = getattr(func, "__name__", name)
        return checked


class _BoundedFormatter(jinja2.sandbox.SandboxedFormatter):
    """The sandbox's formatter, measuring every field: a format string repeats
    fields as often as it likes, and each one may be padded."""

    def __init__(self, env: _Sandbox) -> None:
        super().__init__(env)
        self._bounded = env
        self._made = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        env = self._bounded
        env.check_time()
        env._need(max((int(n) for n in _NUMBER.findall(format_spec)), default=0))
        text = super().format_field(value, format_spec)
        self._made += len(text)
        env._need(self._made)
        return text


_PASSED_IN_FRONT = (jinja2.runtime.Context, jinja2.nodes.EvalContext, jinja2.Environment)


def _filter_arguments(args: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """The filtered value and the filter's own arguments: what follows what Jinja
    passes in front (a context, an eval context, the environment)."""
    for i, arg in enumerate(args):
        if not isinstance(
            arg, jinja2.runtime.Context | jinja2.nodes.EvalContext | jinja2.Environment
        ):
            return arg, list(args[i + 1 :])
    return None, []


def _weight(value: Any, cap: int) -> int:
    """About how many bytes `value` becomes as text, counting a part shared many
    times each time (as printing it would); stops counting past `cap`."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, dict):
            total += 8 * len(item) + 2
            if total <= cap:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 8 * len(item) + 2
            if total <= cap:
                stack.extend(item)
        else:
            total += 8
        if total > cap:
            return total
    return total


def _str_method_size(text: str, method: str, args: tuple[Any, ...], cap: int) -> int:
    """A bound on the size of `text.method(*args)`."""
    strings = [a for a in args if isinstance(a, str)]
    if method == "replace" and len(strings) >= 2:
        old, new = strings[0], strings[1]
        count = len(text) + 1 if old == "" else text.count(old)
        return len(text) + count * max(0, len(new) - len(old))
    if method == "expandtabs":
        size = args[0] if args and isinstance(args[0], int) else 8
        return len(text) + text.count("\t") * max(0, size)
    if method == "join" and args:
        items = args[0]
        length = len(items) if hasattr(items, "__len__") else 0
        return _weight(items, cap) + length * len(text)
    if method in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args and isinstance(args[0], int) else 0
        return max(len(text), width)
    # anything else (translate, format_map, ...): at most its inputs multiplied
    return (len(text) + 1) * (1 + sum(_weight(a, cap) for a in args))


_AMPLIFYING_FILTERS = frozenset(["replace", "indent", "format", "join", "center"])


def _filter_size(
    name: str, value: Any, rest: list[Any], kwargs: Mapping[str, Any], cap: int
) -> int:
    """A bound on the size of the filters that can multiply their input."""
    text = value if isinstance(value, str) else ""
    if name == "replace":
        old = rest[0] if rest else kwargs.get("old", "")
        new = rest[1] if len(rest) > 1 else kwargs.get("new", "")
        return _str_method_size(str(value), "replace", (str(old), str(new)), cap)
    if name == "indent":
        width = rest[0] if rest else kwargs.get("width", 4)
        pad = len(width) if isinstance(width, str) else int(width)
        return len(text) + (text.count("\n") + 1) * pad
    if name == "format":
        return _percent_size(text, tuple(rest) or dict(kwargs), cap)
    if name == "join":
        sep = rest[0] if rest else kwargs.get("d", "")
        length = len(value) if hasattr(value, "__len__") else 0
        return _weight(value, cap) + length * len(str(sep))
    if name == "center":
        width = rest[0] if rest else kwargs.get("width", 80)
        return max(len(text), int(width))
    return 0


def _percent_size(template: str, values: Any, cap: int) -> int:
    """A bound on the size of `template % values`: every conversion may be as
    wide as its width, or as long as all the values."""
    specs = _PERCENT_SPEC.findall(template)
    widths = sum(int(n) for spec in specs for n in spec if n.isdigit())
    if isinstance(values, tuple):
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > cap:
                return cap + 1  # a `*` width
    return len(template) + widths + len(specs) * (_weight(values, cap) + 32)


def _estimate_multiply(env: _Sandbox, left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        if isinstance(times, int) and isinstance(seq, str | bytes | list | tuple):
            env._need(_weight(seq, env.cap) * max(0, times))
    both_int = isinstance(left, int) and isinstance(right, int)
    if both_int and left.bit_length() + right.bit_length() > _INT_BITS:
        raise _Limit(f"an integer is over the limit of {_INT_BITS} bits")


def _estimate_power(base: Any, exponent: Any) -> None:
    ints = isinstance(base, int) and isinstance(exponent, int)
    if ints and abs(base) > 1 and exponent > 0 and exponent * base.bit_length() > _INT_BITS:
        raise _Limit(f"an integer is over the limit of {_INT_BITS} bits")
