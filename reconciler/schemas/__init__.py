"""JSON Schemas for what reconciler reads and writes, for editors and CI linters.

`manifest_schema` builds the schema of a manifest document (the envelope, the
policy, and each installed kind's spec) from the providers' pydantic models, so a
provider installed as its own package is covered without a schema of its own.
`plan_schema` returns a versioned schema of `plan --format json`, shipped as a
file in this package (plan-v2.json; plan-v1.json stays for consumers of the old
shape, 0105) so a consumer can pin the version it reads.

The loader stays the authority: the manifest schema catches a typo in an editor
but cannot see what only the loader checks (references, duplicate ids, a path
outside the roots, a secret reference's source), and it is lenient where a spec
field converts its input (0097).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from reconciler.bundles import BundleSpec
from reconciler.model import API_VERSION, BUNDLE_KIND, SHARD_KIND, Policy
from reconciler.registry import Registry
from reconciler.shards import ShardSpec

PLAN_SCHEMA_VERSIONS = (1, 2)
"""Every plan schema shipped; the last is what `plan --format json` prints."""
NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$"
"""A resource name, as the loader checks it (tests compare it with the loader's)."""


def plan_schema(version: int = PLAN_SCHEMA_VERSIONS[-1]) -> dict[str, Any]:
    """The JSON Schema of `plan --format json` output with that `schemaVersion`
    (default: the version printed now)."""
    if version not in PLAN_SCHEMA_VERSIONS:
        known = ", ".join(map(str, PLAN_SCHEMA_VERSIONS))
        raise ValueError(f"no plan schema version {version}; known: {known}")
    text = resources.files(__name__).joinpath(f"plan-v{version}.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class _Lenient(GenerateJsonSchema):
    """A field with a before-validator converts its input: a duration takes `30s`
    as well as 30, an owner takes 1000 as well as "1000". Its schema is widened to
    the scalars such a field takes, so an editor never flags what the loader
    accepts (the loader still rejects what the validator refuses)."""

    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> JsonSchemaValue:
        inner = super().function_before_schema(schema)
        if inner.get("type") == "number":
            return {**inner, "type": ["number", "string"]}
        if inner.get("type") == "string" and not inner.get("enum"):
            return {**inner, "type": ["string", "integer"]}
        return inner

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # "Ignorefields" titles add noise to editor hovers


def _spec_models(registry: Registry, kinds: Iterable[str]) -> dict[str, type[BaseModel]]:
    own: dict[str, type[BaseModel]] = {BUNDLE_KIND: BundleSpec, SHARD_KIND: ShardSpec}
    return {kind: own[kind] if kind in own else registry[kind].Spec for kind in kinds}


def manifest_schema(registry: Registry, kinds: Iterable[str] | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 7) of one manifest document: `apiVersion`, `kind`,
    `metadata`, the spec of its kind (each installed kind, Bundle and Shard, or only
    `kinds`) and `policy`. Unknown fields are errors, as in the loader."""
    known = sorted([*registry, BUNDLE_KIND, SHARD_KIND])
    chosen = known if kinds is None else list(kinds)
    for kind in chosen:
        if kind not in known:
            raise KeyError(f"unknown kind {kind!r}; known kinds: {', '.join(known)}")
    specs = _spec_models(registry, chosen)
    inputs = [(model, "validation") for model in (*specs.values(), Policy)]
    refs, defs = models_json_schema(
        inputs,  # type: ignore[arg-type]  # pydantic types the mode as a Literal
        by_alias=True,
        ref_template="#/definitions/{model}",
        schema_generator=_Lenient,
    )
    definitions = defs.get("$defs", {})
    policy = refs[(Policy, "validation")]
    # a duration: seconds or a string such as 5m (the loader's parse_duration)
    policy_def = definitions[policy["$ref"].rsplit("/", 1)[1]]
    policy_def["properties"]["resync"]["type"] = ["number", "string"]
    branches = [
        {
            "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
            "then": {"properties": {"spec": refs[(model, "validation")]}},
        }
        for kind, model in specs.items()
    ]
    kind_schema: dict[str, Any] = {"const": chosen[0]} if len(chosen) == 1 else {"enum": chosen}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": f"reconciler manifest ({API_VERSION})",
        "description": "One document of a reconciler config tree. Generated by "
        "`reconciler schema` from the installed providers.",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {**kind_schema, "description": "Selects the provider."},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": NAME_PATTERN,
                        "description": "Unique per kind; the resource id is Kind/name.",
                    },
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"description": "Accepted and ignored."},
                },
            },
            "spec": {"type": "object", "description": "Validated by the kind's provider."},
            "policy": {**policy, "description": "Engine knobs, all optional."},
        },
        "allOf": branches,
        "definitions": definitions,
    }
