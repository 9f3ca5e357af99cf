"""The envelope of a document (`apiVersion`, `kind`, `metadata`, `spec`, `policy`)
as pydantic models, with the messages a reader sees in an error.

`Envelope` checks the shape around a spec: the spec itself is validated by its
provider's model. Errors go out through the loader's one translation of pydantic
errors to `file:line: field: message` (`_Collector._validation`), which lists the
model's fields for an unknown one; `errors` first puts them in reading order and
words the envelope's own (`_MESSAGES`). The kinds a document may name are the
registry's, given as the validation context (`{"kinds": registry}`).

The types are pydantic's own, strict (text is text, not bytes), and only `kind` and
`policy` call Python: every document of a tree the cache misses comes through here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

from reconciler.model import API_VERSION, BUNDLE_KIND, DEFAULT_POLICY, SHARD_KIND, Policy

NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$"
"""A resource name (reconciler.schemas says the same; a test compares them)."""

_MISSING = "required field is missing"


class Metadata(BaseModel):
    """`metadata:` of a document."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=NAME_PATTERN)
    labels: dict[str, str] | None = None
    annotations: Any = None


class Envelope(BaseModel):
    """One document of a manifest: the resource's kind, name and labels, its spec
    (only checked to be a mapping here) and its policy."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    api_version: Literal["reconciler/v1"] = Field(alias="apiVersion")
    kind: str = Field(default=None, validate_default=True)  # its validator words a missing kind
    metadata: Metadata
    spec: dict[Any, Any]
    policy: Policy = DEFAULT_POLICY

    @field_validator("kind", mode="plain")
    @classmethod
    def _kind(cls, value: Any, info: ValidationInfo) -> Any:
        kinds = info.context.get("kinds") if isinstance(info.context, Mapping) else None
        if value in (BUNDLE_KIND, SHARD_KIND) or (
            isinstance(value, str) and (kinds is None or kinds.get(value) is not None)
        ):
            return value
        known = ", ".join(sorted([*(kinds or ()), BUNDLE_KIND, SHARD_KIND]))
        raise ValueError(
            f"unknown kind {value!r}; known kinds: {known}"
            if value is not None
            else f"{_MISSING}; one of {known}"
        )

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        if not value:  # null or empty: the defaults, one shared instance
            return DEFAULT_POLICY
        if not isinstance(value, dict):
            raise ValueError("expected a mapping")
        return value


BODY = ("spec", "policy")
"""The envelope fields whose errors are reported after the checks of the
resource's id (a duplicate id is reported alone; a Bundle checks its own)."""


def _found(expected: str) -> Callable[[Any], str]:
    return lambda found: expected if found is not None else _MISSING


_MESSAGES: dict[tuple[str | int, ...], Callable[[Any], str]] = {
    (): lambda _: "expected a mapping with apiVersion, kind, metadata, spec",
    ("apiVersion",): lambda found: (
        f"expected {API_VERSION!r}, found {found!r}"
        if found is not None
        else f"{_MISSING} (expected {API_VERSION!r})"
    ),
    ("metadata",): _found("expected a mapping with name"),
    ("metadata", "name"): lambda found: (
        f"expected letters, digits, '-', '_' or '.', found {found!r}"
        if found is not None
        else _MISSING
    ),
    ("metadata", "labels"): lambda _: "expected a mapping of strings",
    ("spec",): _found("expected a mapping"),
}
"""The message of any error at these fields, from the value found there (None when
it is missing or null)."""

_ORDER: dict[tuple[str | int, ...], int] = {
    (): 0,
    ("apiVersion",): 2,
    ("kind",): 3,
    ("metadata",): 4,
    ("metadata", "labels"): 6,
    ("metadata", "name"): 7,
    ("spec",): 8,
    ("policy",): 9,
}


def errors(exc: ValidationError) -> list[ErrorDetails]:
    """The errors of a failed `Envelope` validation, each worded for the envelope,
    in the order a reader meets them: the document's unknown fields first, then its
    fields from apiVersion to policy; in metadata, unknown fields, labels, then
    name. A key that is not a string is an unknown field named by its text, as
    any other; a bad labels mapping is one error, however many entries are bad."""
    found: list[tuple[int, ErrorDetails]] = []
    for error in exc.errors(include_url=False):
        loc, kind = error["loc"], error["type"]
        if kind == "invalid_key" and (len(loc) == 1 or loc[:-1] == ("metadata",)):
            error = error.copy()  # `1: x` in YAML: a key that is not text
            error["type"] = "extra_forbidden"
            error["loc"] = loc = (*loc[:-1], str(error["input"]))  # the key (True, not 1)
        elif kind != "extra_forbidden":
            if loc[:2] == ("metadata", "labels"):
                if any(e["loc"] == loc[:2] for _, e in found):
                    continue
                loc = loc[:2]
            message = _MESSAGES.get(loc)
            if message is not None:
                error = error.copy()
                error["type"] = "value_error"
                error["loc"] = loc
                error["msg"] = message(None if kind == "missing" else error["input"])
        if error["type"] == "extra_forbidden":
            rank = 1 if len(loc) == 1 else 5 if loc[0] == "metadata" else _ORDER[loc[:1]]
        else:
            rank = _ORDER.get(loc[:2], _ORDER.get(loc[:1], 9))
        found.append((rank, error))
    found.sort(key=lambda item: item[0])  # stable: pydantic's order within a rank
    return [error for _, error in found]
