"""Bundles: a directory of manifests with declared parameters, instantiated by
`Bundle` documents with values, a name prefix and patches (docs/bundles.md).

This module holds the parts of an instantiation that need no file system:
bundle.yaml's model, the value checks, `${{ values.x }}` substitution, patches
and name prefixes. The loader (`reconciler.manifests`) reads the files and
reports errors at file:line; the fetcher of remote bundles lives with the git
source (`reconciler.sources.bundles`) behind `RemoteFetcher`.

Values reach a bundle's manifests by substitution in parsed YAML, never by
rendering text: a string that is exactly `${{ values.port }}` becomes the
value itself (an integer, a list, a secret reference), one that holds it among
other text gets it as text. There are no expressions, so nothing a bundle or a
value holds can run, loop or grow past the size of its values.
"""

from __future__ import annotations

import fnmatch
import json
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import jsonpatch
import jsonpointer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reconciler.model import API_VERSION, BUNDLE_KIND, is_secret_ref

with warnings.catch_warnings():  # the parser re uses, under its public 3.10 name
    warnings.simplefilter("ignore", DeprecationWarning)
    import sre_constants
    import sre_parse

__all__ = [
    "BUNDLE_KIND",
    "DEFINITION_FILE",
    "BundleSourceError",
    "BundleSpec",
    "Definition",
    "Parameter",
    "RemoteFetcher",
    "RemoteSource",
    "RemoteTree",
    "SubstitutionError",
    "apply_patches",
    "check_values",
    "fill",
]

DEFINITION_FILE = "bundle.yaml"
"""The file that makes a directory a bundle; its manifests are then loaded only
through `Bundle` documents, never as manifests of the tree."""

MAX_PATTERN = 256
"""Characters of a parameter's pattern."""
MAX_MATCHED = 4096
"""Characters of a string value checked against a pattern."""

_PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
_PREFIX = r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})?$"
_SHA = re.compile(r"^[0-9a-f]{40}$")


class BundleSourceError(Exception):
    """A remote bundle could not be fetched; the message says why, without
    credentials, and is shown at the `Bundle` document's `spec.source`."""


@dataclass(frozen=True, slots=True)
class RemoteTree:
    """A remote bundle's directory at one commit, exported on the local disk."""

    root: Path
    """The directory named by `path` in the commit (read-only for the loader)."""
    commit: str
    """The full commit id the ref resolved to."""


class RemoteFetcher(Protocol):
    """Fetches remote bundles with the main repository's git credentials."""

    def fetch(self, repo: str, ref: str, path: str) -> RemoteTree:
        """The tree of `path` at `ref` (branch, tag or commit) of `repo`; raises
        BundleSourceError. A commit id is served from the cache without a network
        round trip once fetched; a branch or tag is resolved again at each call
        (a fetcher may remember a resolution for the life of one load)."""
        ...


def pinned(ref: str) -> bool:
    """Whether a ref is a full commit id (the same tree whenever it is fetched)."""
    return bool(_SHA.match(ref))


# ---------------------------------------------------------------- bundle.yaml

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
    return None if ok else f"expected {_ARTICLE[kind]}, found {_shown(value)}"


def _shown(value: Any) -> str:
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
        return f"expected one of {', '.join(map(repr, param.enum))}, found {_shown(value)}"
    if param.pattern is not None:
        if len(value) > MAX_MATCHED:
            return f"a value matched against a pattern is at most {MAX_MATCHED} characters"
        if not re.fullmatch(param.pattern, value):
            return f"{_shown(value)} does not match the pattern {param.pattern!r}"
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


# ---------------------------------------------------------------- the Bundle document


class RemoteSource(BaseModel):
    """A bundle in another git repository, fetched at `ref`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str = Field(min_length=1, max_length=2048)
    ref: str = Field(min_length=1, max_length=255)
    path: str = Field(default=".", min_length=1, max_length=1024)


class PatchTarget(BaseModel):
    """Which documents of the bundle a patch changes: kind and name as the bundle
    writes them (before the prefix), each a glob; an absent one matches all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str | None = None
    name: str | None = None


class Patch(BaseModel):
    """A merge patch (a mapping, RFC 7396) or a JSON Patch (a list, RFC 6902)
    of whole documents (`spec`, `policy`, `metadata.labels`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: PatchTarget = Field(default_factory=PatchTarget)
    patch: dict[str, Any] | list[dict[str, Any]]


class BundleSpec(BaseModel):
    """The spec of a `Bundle` document."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: str | RemoteSource
    """A directory of the tree, relative to the manifest (`./bundles/webapp`), or a
    remote bundle."""
    values: dict[str, Any] = Field(default_factory=dict)
    name_prefix: str = Field(default="", alias="namePrefix", pattern=_PREFIX)
    patches: list[Patch] = Field(default_factory=list, max_length=1000)

    @field_validator("source")
    @classmethod
    def _relative(cls, value: str | RemoteSource) -> str | RemoteSource:
        if isinstance(value, str):
            if not value or value.startswith("/"):
                raise ValueError("expected a directory relative to this file (./bundles/x)")
            if "\0" in value:
                raise ValueError("a path holds no NUL character")
        return value


# ---------------------------------------------------------------- substitution

_EXPRESSION = re.compile(r"(\$?)\$\{\{\s*((?:(?!\}\}).)*?)\s*\}\}", re.DOTALL)
"""`${{ expression }}` (group 2), `$${{ ... }}` when group 1 holds the extra `$`;
an expression never spans a `}}`, so two in one string stay two."""
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d{1,9})\]")


class SubstitutionError(Exception):
    """A `${{ }}` that cannot be filled; `path` is the field in the document."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


def fill(
    data: Any,
    scope: Mapping[str, Mapping[str, Any]],
    secrets: frozenset[str],
    budget: int = 16 * 1024 * 1024,
) -> Any:
    """A copy of a parsed document with each `${{ values.x }}` replaced (`scope`:
    `values` and `bundle`). `secrets` are the secret parameters, which may only
    stand alone (their reference is a mapping). What the substitutions add to the
    document may not pass `budget` characters (a large value used in many fields
    would otherwise multiply). Raises SubstitutionError."""
    sizes: dict[int, int] = {}
    spent = 0

    def size(value: Any) -> int:
        if isinstance(value, str):
            return len(value)
        if not isinstance(value, dict | list):
            return 8
        known = sizes.get(id(value))
        if known is None:
            known = sizes[id(value)] = len(json.dumps(value, default=str))
        return known

    def walk(value: Any, path: tuple[str | int, ...]) -> Any:
        nonlocal spent
        if isinstance(value, str):
            if "${{" not in value:
                return value
            filled = _fill_text(value, path, scope, secrets)
            spent += size(filled)
            if spent > budget:
                raise SubstitutionError(
                    path,
                    f"the values filled into this document are over {budget} characters "
                    "(max_expanded_bytes)",
                )
            return filled
        if isinstance(value, dict):
            return {k: walk(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        return value

    return walk(data, ())


def _fill_text(
    text: str,
    path: tuple[str | int, ...],
    scope: Mapping[str, Mapping[str, Any]],
    secrets: frozenset[str],
) -> Any:
    whole = _EXPRESSION.fullmatch(text)
    if whole is not None and not whole.group(1):
        return _lookup(whole.group(2), path, scope, secrets, alone=True)

    def one(match: re.Match[str]) -> str:
        if match.group(1):  # $${{ ... }} is the text ${{ ... }}
            return match.group(0)[1:]
        value = _lookup(match.group(2), path, scope, secrets, alone=False)
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None or isinstance(value, dict | list):
            what = "no value" if value is None else _shown(value)
            raise SubstitutionError(
                path,
                f"${{{{ {match.group(2)} }}}} has {what}: only a value that stands alone "
                "in its field may be a list, a mapping or empty",
            )
        return str(value)

    return _EXPRESSION.sub(one, text)


def _lookup(
    expression: str,
    path: tuple[str | int, ...],
    scope: Mapping[str, Mapping[str, Any]],
    secrets: frozenset[str],
    *,
    alone: bool,
) -> Any:
    head, _, rest = expression.partition(".")
    head, bracket, tail = head.partition("[")
    rest = f"[{tail}" + (f".{rest}" if rest else "") if bracket else rest
    root = scope.get(head)
    if root is None:
        raise SubstitutionError(
            path, f"${{{{ {expression} }}}}: expected values.NAME or bundle.name / bundle.prefix"
        )
    steps = _STEP.findall("." + rest) if rest else []
    if "".join(f".{k}" if k else f"[{i}]" for k, i in steps) != ("." + rest if rest else ""):
        raise SubstitutionError(path, f"${{{{ {expression} }}}}: not a name such as values.port")
    if not steps:
        raise SubstitutionError(path, f"${{{{ {expression} }}}}: name a field ({head}.NAME)")
    value: Any = root
    for i, (key, index) in enumerate(steps):
        if key:
            if not isinstance(value, Mapping) or key not in value:
                if i == 0:
                    known = ", ".join(root) or "none"
                    raise SubstitutionError(
                        path,
                        f"unknown parameter {key!r} in ${{{{ {expression} }}}}; "
                        f"the bundle declares {known}",
                    )
                raise SubstitutionError(path, f"${{{{ {expression} }}}}: no field {key!r}")
            value = value[key]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                raise SubstitutionError(path, f"${{{{ {expression} }}}}: no item {index}")
            value = value[int(index)]
        if i == 0 and head == "values" and key in secrets and not (alone and len(steps) == 1):
            raise SubstitutionError(
                path,
                f"secret parameter {key!r} can only stand alone in its field "
                f"(`field: ${{{{ values.{key} }}}}`): its reference is resolved by the provider",
            )
    return value


# ---------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: a mapping merges key by key, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def matches(target: PatchTarget, kind: Any, name: Any) -> bool:
    return (target.kind is None or fnmatch.fnmatchcase(str(kind), target.kind)) and (
        target.name is None or fnmatch.fnmatchcase(str(name), target.name)
    )


def apply_patches(
    documents: list[Any],
    patches: list[Patch],
    identity: Callable[[Any], tuple[Any, Any]],
) -> list[tuple[tuple[str | int, ...], str]]:
    """Apply each patch, in order, to the documents its target matches (in place
    in `documents`); the problems, as (path under `spec.patches`, message).
    `identity` gives a document's (kind, name) as the bundle writes them."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, patch in enumerate(patches):
        hits = 0
        for d, document in enumerate(documents):
            if not isinstance(document, dict) or not matches(patch.target, *identity(document)):
                continue
            hits += 1
            before = identity(document)
            try:
                if isinstance(patch.patch, dict):
                    patched = merge_patch(document, patch.patch)
                else:
                    patched = jsonpatch.apply_patch(document, patch.patch, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                problems.append(((i, "patch"), f"{_doc(before)}: {exc}"))
                continue
            except (TypeError, KeyError, ValueError, IndexError, AttributeError) as exc:
                problems.append(((i, "patch"), f"{_doc(before)}: not a valid patch ({exc})"))
                continue
            if (
                not isinstance(patched, dict)
                or identity(patched) != before
                or patched.get("apiVersion") != document.get("apiVersion")
            ):
                problems.append(
                    (
                        (i, "patch"),
                        f"{_doc(before)}: a patch cannot change apiVersion, kind or name",
                    )
                )
                continue
            documents[d] = patched
        if not hits:
            problems.append(((i, "target"), "matches no document of the bundle"))
    return problems


def _doc(identity: tuple[Any, Any]) -> str:
    return f"{identity[0]}/{identity[1]}"


__all__ += ["API_VERSION", "matches", "merge_patch", "pinned"]
