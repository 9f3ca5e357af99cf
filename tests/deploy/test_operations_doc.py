"""docs/operations.md stays true: its settings table lists every option of
`reconciler run` (flag, variable, settings-file key, default) and nothing else,
its metrics table every family the daemon exports, its runbook one section per
alert; its links, and the links deploy/ makes into it, resolve."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from reconciler.cli import run
from reconciler.metrics import FAMILIES
from tests.deploy.conftest import DEPLOY, OPERATIONS, REPO, github_anchors


def _section(title: str) -> str:
    """The text of the `## title` section, up to the next `## ` heading."""
    text = OPERATIONS.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section '## {title}' in {OPERATIONS}"
    return match.group(1)


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| `")]


def _options() -> list[click.Option]:
    return [p for p in run.params if isinstance(p, click.Option)]


def _settings_key(option: click.Option) -> str:
    assert option.name
    return {"roots": "root", "subpath": "path"}.get(option.name, option.name).replace("_", "-")


def _row_of(option: click.Option) -> str:
    rows = [
        row for row in _table_rows(_section("Settings")) if row.startswith(f"| `{option.opts[0]}")
    ]
    assert len(rows) == 1, f"{option.opts[0]}: expected one row in the settings table, found {rows}"
    return rows[0]


@pytest.mark.parametrize("option", _options(), ids=lambda option: option.opts[0])
def test_every_run_option_is_in_the_settings_table(option: click.Option) -> None:
    row = _row_of(option)
    assert f"`{option.envvar}`" in row
    if option.name != "config":
        assert f"`{_settings_key(option)}`" in row
    default: Any = option.default
    if isinstance(default, (str, int, float)) and not isinstance(default, bool):
        assert f"`{default}`" in row, f"{option.opts[0]}: default {default!r} not in {row!r}"
    elif isinstance(default, tuple) and default:  # a repeatable option's list
        assert f"`{' '.join(map(str, default))}`" in row, f"{option.opts[0]}: {row!r}"
    elif option.required:
        assert "required" in row
    else:
        assert re.search(r"\| (none|off|the remote HEAD|ssh's defaults)", row), row


def test_the_settings_table_lists_only_real_options() -> None:
    known = {opt for option in _options() for opt in option.opts}
    rows = _table_rows(_section("Settings"))
    documented = {flag for row in rows for flag in re.findall(r"^\| `(--[a-z-]+)", row)}
    assert documented == known


def test_settings_file_example_uses_known_keys() -> None:
    (example,) = re.findall(r"```yaml\n(.*?)```", _section("Settings"), re.S)
    keys = set(yaml.safe_load(example))
    known = {_settings_key(option) for option in _options()} | {"subpath", "roots"}
    assert keys <= known


def test_every_metric_family_is_documented() -> None:
    rows = _table_rows(_section("Metrics"))
    documented = {name for row in rows for name in re.findall(r"^\| `([a-z_]+)`", row)}
    reconciler_rows = {name for name in documented if name.startswith("reconciler_")}
    assert reconciler_rows == set(FAMILIES)
    for row in rows:
        name, kind = (cell.strip(" `") for cell in row.strip("|").split("|")[:2])
        if name in FAMILIES:
            assert kind == FAMILIES[name], f"{name} is a {FAMILIES[name]}, documented as {kind}"


def test_runbook_has_a_section_per_alert_and_no_other() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    sections = re.findall(r"^### (\S+)$", _section("Runbook"), re.M)
    assert sections == alerts


def _links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", markdown)


def test_links_resolve() -> None:
    text = OPERATIONS.read_text()
    for link in _links(text):
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = (OPERATIONS.parent / path).resolve() if path else OPERATIONS
        assert target.exists(), f"broken link {link}"
        if anchor:
            assert target.suffix == ".md", link
            assert anchor in github_anchors(target.read_text()), f"no #{anchor} in {target.name}"


def test_links_from_deploy_and_docs_into_operations_resolve() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    files: list[Path] = [p for p in DEPLOY.rglob("*") if p.is_file()]
    files += list((REPO / "docs").glob("*.md"))
    for file in files:
        for anchor in re.findall(r"operations\.md#([\w-]+)", file.read_text()):
            assert anchor in anchors, f"{file.relative_to(REPO)} links to a missing #{anchor}"
