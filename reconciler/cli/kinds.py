"""The commands about the installed kinds rather than a tree: `providers` (each
kind's spec fields) and `schema` (a JSON Schema of manifests, or of plan JSON)."""

from __future__ import annotations

import json
from typing import Any

import click

from reconciler.cli.common import _fail, _registry, json_option, root_option


@click.command()
@root_option
@json_option
def providers(roots: tuple[str, ...], as_json: bool) -> None:
    """List the installed providers and their spec fields."""
    registry = _registry(roots)
    rows: list[dict[str, Any]] = []
    for kind in registry:
        provider = registry[kind]
        row: dict[str, Any] = {
            "kind": kind,
            "module": type(provider).__module__,
            "summary": provider.summary,
        }
        variants = _spec_variants(provider.Spec)
        if variants:  # a spec that is one of several models, chosen by a tag (Connection)
            row["variants"] = {tag: _fields(model) for tag, model in variants.items()}
        else:
            row["fields"] = _fields(provider.Spec)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['kind']}  ({row['module']})")
        if row["summary"]:
            click.echo(f"  {row['summary']}")
        for tag, fields in row.get("variants", {"": row.get("fields", [])}).items():
            if tag:
                click.echo(f"  type: {tag}")
            for f in fields:
                required = "  (required)" if f["required"] else ""
                click.echo(f"    {f['name']:<10} {f['type']}{required}")


@click.command()
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND",
    help="Only this kind (repeatable); default every installed kind.",
)
@click.option(
    "--plan",
    "plan_output",
    is_flag=True,
    help="Print the JSON Schema of `plan --format json` instead.",
)
def schema(kinds: tuple[str, ...], plan_output: bool) -> None:
    """Print a JSON Schema of manifest documents, from the installed providers, for
    editors (yaml-language-server) and CI linters."""
    from reconciler.schemas import manifest_schema, plan_schema

    if plan_output:
        if kinds:
            raise click.UsageError("--kind applies to manifests, not to --plan")
        click.echo(json.dumps(plan_schema(), indent=2))
        return
    registry = _registry(())
    try:
        document = manifest_schema(registry, kinds or None)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    click.echo(json.dumps(document, indent=2))


def _fields(model: type[Any]) -> list[dict[str, Any]]:
    return [
        {"name": f.alias or name, "type": _type_name(f.annotation), "required": f.is_required()}
        for name, f in model.model_fields.items()
    ]


def _spec_variants(model: type[Any]) -> dict[str, type[Any]]:
    """The members of a spec that is a RootModel over a tagged union, by tag."""
    import typing

    from pydantic import RootModel

    if not (isinstance(model, type) and issubclass(model, RootModel)):
        return {}
    root = model.model_fields["root"]
    tag = root.discriminator
    found: dict[str, type[Any]] = {}
    for member in typing.get_args(root.annotation):
        if isinstance(tag, str) and tag in getattr(member, "model_fields", {}):
            for value in typing.get_args(member.model_fields[tag].annotation):
                found[str(value)] = member
    return found


def _type_name(annotation: Any) -> str:
    """`str | None` rather than typing's repr with validators and addresses."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"list[{_type_name(args[0])}]"
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
