"""bundle.yaml's model and the checks of the values a `Bundle` document gives:
`Definition` and its `Parameter`s (types, enums, patterns, bounds), and
`check_values`, which fills in defaults and names every problem.

A parameter's pattern is untrusted input (a bundle may come from another
repository), so a pattern whose matching time can explode is refused and the
strings matched against one are bounded.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reconciler.model import is_secret_ref

with warnings.catch_warnings():  # the parser re uses, under its public 3.10 name
    warnings.simplefilter("ignore", DeprecationWarning)
    import sre_constants
    import sre_parse

DEFINITION_FILE = "bundle.yaml"
"""The file that makes a directory a bundle; its manifests are then loaded only
through `Bundle` documents, never as manifests of the tree."""

MAX_PATTERN = 256
"""Characters of a parameter's pattern."""
MAX_MATCHED = 4096
"""Characters of a string value checked against a pattern."""

_PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"

_TYPES = ("string", "integer", "boolean", "list", "mapping", "secret")
ParamType = Literal["string", "integer", "boolean", "list", "mapping", "secret"]


class Parameter(BaseModel):
    """One parameter a bundle declares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParamType
    description: str = ""
    required: bool = False
    default: Any = None
    enum: list[Any] | None = Field(default=None, min_length=1)
    pattern: str | None = Field(default=None, max_length=MAX_PATTERN)
    minimum: int | None = None
    maximum: int | None = None

    @field_validator("pattern")
    @classmethod
    def _safe_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            _check_pattern(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Parameter:
        if self.pattern is not None and self.type != "string":
            raise ValueError(f"pattern applies to a string parameter, not to {self.type}")
        if (self.minimum is not None or self.maximum is not None) and self.type != "integer":
            raise ValueError(f"minimum and maximum apply to an integer, not to {self.type}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is over maximum {self.maximum}")
        if self.enum is not None:
            if self.type in ("secret", "list", "mapping"):
                raise ValueError(
                    f"enum applies to a string, integer or boolean, not to {self.type}"
                )
            for value in self.enum:
                problem = _type_problem(self.type, value)
                if problem is not None:
                    raise ValueError(f"enum: {problem}")
        if self.required and "default" in self.model_fields_set:
            raise ValueError("a required parameter has no default: drop one of them")
        if self.default is not None:
            problem = check_value(self, self.default)
            if problem is not None:
                raise ValueError(f"default: {problem}")
        return self


class Definition(BaseModel):
    """bundle.yaml: what the bundle is and the parameters it takes."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: Literal["reconciler/v1"] = Field(alias="apiVersion")
    kind: Literal["BundleDefinition"]
    description: str = ""
    parameters: dict[str, Parameter] = Field(default_factory=dict)

    @field_validator("parameters")
    @classmethod
    def _names(cls, value: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in value:
            if not re.match(_PARAM_NAME, name):
                raise ValueError(
                    f"parameter name {name!r}: expected letters, digits and '_', "
                    "starting with a letter or '_'"
                )
        return value


def _check_pattern(pattern: str) -> None:
    """Refuse a pattern that does not compile, or whose time can explode: a
    repetition inside a repetition (`(a+)+`) backtracks exponentially on a
    near-match, and a bundle is untrusted input."""
    try:
        parsed = sre_parse.parse(pattern)
    except (sre_constants.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"pattern does not compile: {exc}") from None
    if _nested_repeat(parsed.data, inside=False):
        raise ValueError(
            "pattern repeats a repetition (such as (a+)+), which can take exponential time"
        )


_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT)


def _nested_repeat(items: Any, *, inside: bool) -> bool:
    for op, arg in items:
        if op in _REPEATS:
            low, high, body = arg
            if inside and high != low:
                return True
            if _nested_repeat(body.data if hasattr(body, "data") else body, inside=high != low):
                return True
        elif op is sre_constants.SUBPATTERN:
            if _nested_repeat(arg[-1].data, inside=inside):
                return True
        elif op is sre_constants.BRANCH:
            if any(_nested_repeat(b.data, inside=inside) for b in arg[1]):
                return True
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            if _nested_repeat(arg[1].data, inside=inside):
                return True
        elif op is sre_constants.ATOMIC_GROUP and _nested_repeat(arg.data, inside=inside):
            return True
    return False


_ARTICLE = {
    "string": "a string",
    "integer": "an integer",
    "boolean": "a boolean (true or false)",
    "list": "a list",
    "mapping": "a mapping",
    "secret": "a secret reference (valueFrom: {env: NAME} or {file: /path})",
}


def _type_problem(kind: str, value: Any) -> str | None:
    ok = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "list": lambda v: isinstance(v, list),
        "mapping": lambda v: isinstance(v, dict),
        "secret": is_secret_ref,
    }[kind](value)
    return None if ok else f"expected {_ARTICLE[kind]}, found {shown(value)}"


def shown(value: Any) -> str:
    """`value` for an error message: its kind for a mapping or a list (which may be
    large, or hold a secret reference), else its repr cut to 60 characters."""
    if isinstance(value, dict | list):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(param: Parameter, value: Any) -> str | None:
    """What is wrong with `value` for `param`, or None."""
    problem = _type_problem(param.type, value)
    if problem is not None:
        return problem
    if param.enum is not None and value not in param.enum:
        return f"expected one of {', '.join(map(repr, param.enum))}, found {shown(value)}"
    if param.pattern is not None:
        if len(value) > MAX_MATCHED:
            return f"a value matched against a pattern is at most {MAX_MATCHED} characters"
        if not re.fullmatch(param.pattern, value):
            return f"{shown(value)} does not match the pattern {param.pattern!r}"
    if param.minimum is not None and value < param.minimum:
        return f"must be at least {param.minimum}, found {value}"
    if param.maximum is not None and value > param.maximum:
        return f"must be at most {param.maximum}, found {value}"
    return None


def check_values(
    definition: Definition, given: Mapping[str, Any]
) -> tuple[dict[str, Any], list[tuple[tuple[str, ...], str]]]:
    """The values the bundle receives (defaults filled in) and every problem, as
    (path under `spec.values`, message naming the parameter)."""
    params = definition.parameters
    problems: list[tuple[tuple[str, ...], str]] = []
    values: dict[str, Any] = {}
    declared = ", ".join(params) or "none"
    for name, value in given.items():
        param = params.get(name)
        if param is None:
            problems.append(
                ((name,), f"unknown parameter {name!r}; the bundle declares {declared}")
            )
            continue
        problem = check_value(param, value)
        if problem is not None:
            problems.append(((name,), f"parameter {name!r} ({param.type}): {problem}"))
        values[name] = value
    for name, param in params.items():
        if name in given:
            continue
        if param.required:
            about = f": {param.description}" if param.description else ""
            message = f"required parameter {name!r} ({param.type}) is missing{about}"
            problems.append(((), message))
        values[name] = param.default
    return {name: values[name] for name in params if name in values}, problems
