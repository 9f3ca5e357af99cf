"""`${{ values.x }}` substitution in a parsed document (`fill`).

Values reach a bundle's manifests by substitution in parsed YAML, never by
rendering text: a string that is exactly `${{ values.port }}` becomes the value
itself (an integer, a list, a secret reference), one that holds it among other
text gets it as text. There are no expressions, and what the substitutions add
to a document is bounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from reconciler.bundles.definition import shown

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
            what = "no value" if value is None else shown(value)
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
