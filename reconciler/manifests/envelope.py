"""The envelope of a document (`apiVersion`, `kind`, `metadata`, `spec`, `policy`)
as pydantic models, with the messages a reader sees in an error.

`Envelope` checks the shape around a spec: the spec itself is validated by its
provider's model. Errors go out through the loader's one translation of pydantic
errors to `file:line: field: message` (`_Collector._validation`): unknown fields
list the model's fields, the other messages are the validators' own. The kinds a
document may name are the registry's, given as the validation context
(`{"kinds": registry}`).

Most validators are plain: each checks its field's type itself, so pydantic does not
check it a second time (every document of a tree the cache misses comes through here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from reconciler.model import API_VERSION, BUNDLE_KIND, DEFAULT_POLICY, Policy

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")
"""A resource name (reconciler.schemas says the same; a test compares them)."""

_MISSING = "required field is missing"


class Metadata(BaseModel):
    """`metadata:` of a document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default=None, validate_default=True)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: Any = None

    @field_validator("name", mode="plain")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(_MISSING)
        if not isinstance(value, str) or not _NAME.match(value):
            raise ValueError(f"expected letters, digits, '-', '_' or '.', found {value!r}")
        return value

    @field_validator("labels", mode="plain")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if value is None:
            return {}
        # one error for the whole mapping, not one per bad entry
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ValueError("expected a mapping of strings")
        return value


class Envelope(BaseModel):
    """One document of a manifest: the resource's kind, name and labels, its spec
    (only checked to be a mapping here) and its policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: str = Field(default=None, alias="apiVersion", validate_default=True)
    kind: str = Field(default=None, validate_default=True)
    metadata: Metadata = Field(default=None, validate_default=True)
    spec: dict[Any, Any] = Field(default=None, validate_default=True)
    policy: Policy = DEFAULT_POLICY

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("expected a mapping with apiVersion, kind, metadata, spec")
        return data

    @field_validator("api_version", mode="plain")
    @classmethod
    def _api_version(cls, value: Any) -> Any:
        if value != API_VERSION:
            raise ValueError(
                f"expected {API_VERSION!r}, found {value!r}"
                if value is not None
                else f"{_MISSING} (expected {API_VERSION!r})"
            )
        return value

    @field_validator("kind", mode="plain")
    @classmethod
    def _kind(cls, value: Any, info: ValidationInfo) -> Any:
        kinds = info.context.get("kinds") if isinstance(info.context, Mapping) else None
        if kinds is None:
            return value  # no registry to check against: any kind
        if value == BUNDLE_KIND or (isinstance(value, str) and kinds.get(value) is not None):
            return value
        known = ", ".join(sorted([*kinds, BUNDLE_KIND]))
        raise ValueError(
            f"unknown kind {value!r}; known kinds: {known}"
            if value is not None
            else f"{_MISSING}; one of {known}"
        )

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping with name" if value is not None else _MISSING)
        return value

    @field_validator("spec", mode="plain")
    @classmethod
    def _spec(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping" if value is not None else _MISSING)
        return value

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        if not value:  # absent, null or empty: the defaults, one shared instance
            return DEFAULT_POLICY
        if not isinstance(value, dict):
            raise ValueError("expected a mapping")
        return value


BODY = ("spec", "policy")
"""The envelope fields whose errors are reported after the checks of the
resource's id (a duplicate id is reported alone; a Bundle checks its own)."""

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
    """The errors of a failed `Envelope` validation, in the order a reader meets
    them: the document's unknown fields first, then its fields from apiVersion to
    policy; in metadata, unknown fields, labels, then name. A key that is not a
    string is an unknown field named by its text, as any other."""
    found: list[tuple[int, ErrorDetails]] = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if error["type"] == "invalid_key" and (len(loc) == 1 or loc[:-1] == ("metadata",)):
            error = error.copy()  # `1: x` in YAML: a key that is not text
            error["type"] = "extra_forbidden"
            error["loc"] = loc = (*loc[:-1], str(error["input"]))  # the key (True, not 1)
        elif loc[:1] == ("api_version",) and error["type"] != "extra_forbidden":
            error = error.copy()  # the error of a default names the field, not its key
            error["loc"] = loc = ("apiVersion", *loc[1:])
        if error["type"] == "extra_forbidden" and len(loc) == 1:
            rank = 1
        elif error["type"] == "extra_forbidden" and loc[0] == "metadata":
            rank = 5
        else:
            rank = _ORDER.get(loc[:2], _ORDER.get(loc[:1], 9))
        found.append((rank, error))
    found.sort(key=lambda item: item[0])  # stable: pydantic's order within a rank
    return [error for _, error in found]
