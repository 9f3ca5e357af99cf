"""Jinja2's immutable sandbox with the checks that bound a render: a deadline
and a call depth checked at every call, attribute, operator and output chunk,
and the size of every value the template computes, measured once it is made
or, where one C call could allocate without bound (`str` methods, amplifying
filters, `%`, `*`, `**`), estimated before it is."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jinja2
import jinja2.compiler
import jinja2.nodes
import jinja2.runtime
import jinja2.sandbox

from reconciler.templates.limits import _INT_BITS, TemplateLimits, _Limit
from reconciler.templates.loader import _COMPILED, _TreeLoader


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
