"""`reconciler schema`: the JSON Schema of manifests built from the installed
providers accepts every document of the demo tree (which the loader accepts) and
rejects the envelope, spec and policy mistakes the loader rejects."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from reconciler import manifests
from reconciler.model import ProviderSettings
from reconciler.registry import Registry
from reconciler.schemas import NAME_PATTERN, manifest_schema, plan_schema

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = manifest_schema(Registry.discover(ProviderSettings()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _demo_documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(DEMO.rglob("*.yaml")):
        if "bundles" in path.relative_to(DEMO).parts:
            continue  # a bundle's files: bundle.yaml, and manifests before their values
        found += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return found


def test_every_demo_document_is_valid(validator: jsonschema.Draft7Validator) -> None:
    documents = _demo_documents()
    assert len(documents) >= 5
    for document in documents:
        errors = [e.message for e in validator.iter_errors(document)]
        assert not errors, (document["kind"], document["metadata"]["name"], errors)


FILE = {
    "apiVersion": "reconciler/v1",
    "kind": "File",
    "metadata": {"name": "app-config", "labels": {"team": "a"}},
    "spec": {"path": "/srv/app/config.ini", "content": "x\n", "mode": "0640", "owner": 1000},
    "policy": {"drift": "warn", "resync": "5m", "dependsOn": ["Directory/app"]},
}


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    document = copy.deepcopy(FILE)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


def test_durations_owners_and_secret_references_pass(
    validator: jsonschema.Draft7Validator,
) -> None:
    validator.validate(FILE)
    validator.validate(_with(("spec", "content"), {"valueFrom": {"env": "APP_TOKEN"}}))
    command = {
        "apiVersion": "reconciler/v1",
        "kind": "Command",
        "metadata": {"name": "reload"},
        "spec": {"argv": ["true"], "timeout": "30s"},
    }
    validator.validate(command)
    connection = {
        "apiVersion": "reconciler/v1",
        "kind": "Connection",
        "metadata": {"name": "api"},
        "spec": {"type": "http", "baseUrl": "https://api.example", "timeout": 5},
    }
    validator.validate(connection)


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("apiVersion",), "reconciler/v2", "apiVersion"),
        (("kind",), "Fiel", "kind"),
        (("metadata", "name"), "has space", "metadata.name"),
        (("metadata", "team"), "a", "metadata"),
        (("metadata", "labels"), {"team": 1}, "metadata.labels.team"),
        (("spec", "bogus"), 1, "spec"),
        (("spec", "path"), ["/a"], "spec.path"),
        (("policy", "drift"), "explode", "policy.drift"),
        (("policy", "prune"), "yes", "policy.prune"),
        (("status",), {}, ""),
    ],
)
def test_wrong_documents_fail(
    validator: jsonschema.Draft7Validator, path: tuple[str, ...], value: Any, where: str
) -> None:
    errors = list(validator.iter_errors(_with(path, value)))
    assert errors
    assert where in {".".join(map(str, e.absolute_path)) for e in errors}


def test_a_connection_of_an_unknown_type_fails(validator: jsonschema.Draft7Validator) -> None:
    document = {
        "apiVersion": "reconciler/v1",
        "kind": "Connection",
        "metadata": {"name": "api"},
        "spec": {"type": "ftp", "baseUrl": "ftp://x"},
    }
    assert list(validator.iter_errors(document))


def test_the_name_pattern_is_the_loaders() -> None:
    assert manifests._NAME.pattern == NAME_PATTERN


def test_one_kind_and_unknown_kind() -> None:
    registry = Registry.discover(ProviderSettings())
    schema = manifest_schema(registry, ["Symlink"])
    assert schema["properties"]["kind"]["const"] == "Symlink"
    assert len(schema["allOf"]) == 1
    with pytest.raises(KeyError, match="unknown kind 'Nope'"):
        manifest_schema(registry, ["Nope"])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "schema", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command() -> None:
    every = _cli()
    assert every.returncode == 0, every.stderr
    assert set(json.loads(every.stdout)["properties"]["kind"]["enum"]) >= {"File", "Connection"}
    one = _cli("--kind", "File")
    assert json.loads(one.stdout)["properties"]["kind"] == {
        "const": "File",
        "description": "Selects the provider.",
    }
    plan = _cli("--plan")
    assert json.loads(plan.stdout) == plan_schema(2)
    unknown = _cli("--kind", "Nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: unknown kind 'Nope'; known kinds: ")


def test_a_shard_document_validates_against_the_schema() -> None:
    """Shard documents are not resources, but editors see them beside the others."""
    schema = manifest_schema(Registry.discover(ProviderSettings()))
    shard = {
        "apiVersion": "reconciler/v1",
        "kind": "Shard",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {
                "matchLabels": {"team": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}],
            }
        },
    }
    jsonschema.validate(shard, schema)
    shard["spec"]["selector"]["matchExpressions"][0]["operator"] = "Near"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(shard, schema)
