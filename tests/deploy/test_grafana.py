"""deploy/grafana: the dashboard checked structurally (no Grafana server here): valid
JSON, a data source variable, unique panel ids, a place on the grid for every panel,
queries on every panel, and every query naming only metrics and labels the daemon
exports. The provisioning files point at what compose mounts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, check_expression
from tests.system import ensure_debian

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboard.json"


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])  # inside collapsed rows
    return panels


def test_dashboard_header() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "reconciler"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert "id" not in dashboard or dashboard["id"] is None  # ids are per Grafana instance


def test_datasource_variable_used_by_every_panel_and_query() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in _panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == wanted, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == wanted, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == wanted, variable["name"]


def test_panel_ids_unique_and_grid_positions_valid() -> None:
    panels = _panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert set(grid) >= {"x", "y", "w", "h"}, panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']!r} overlaps another panel"
        cells |= mine


def test_every_panel_has_queries_with_unique_ref_ids() -> None:
    for panel in _panels():
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no targets"
        refs = [target["refId"] for target in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]


def test_the_panels_the_issue_asks_for() -> None:
    exprs = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in _panels()}
    wanted = {
        "Resources by state": "reconciler_resources",
        "Drifted resources": "reconciler_resource_drifted",
        "Applies and failures": "reconciler_apply_total",
        "Reconcile latency by phase": "reconciler_reconcile_duration_seconds_bucket",
        "Current revision": "reconciler_source_revision_info",
        "Fetch errors": 'result="error"',
        "Queue depth": "reconciler_queue_depth",
        "Last converged": "reconciler_last_converged_timestamp_seconds",
    }
    for title, needle in wanted.items():
        assert title in exprs, f"no panel {title!r}"
        assert needle in exprs[title], f"{title!r} does not query {needle}"
    latency = exprs["Reconcile latency by phase"]
    assert "histogram_quantile(" in latency and "by (le, phase)" in latency


@pytest.mark.parametrize(
    ("title", "expr", "legend"),
    [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in _panels()
        for target in panel.get("targets", [])
    ],
    ids=lambda value: str(value)[:40],
)
def test_queries_name_exported_metrics(
    title: str, expr: str, legend: str, exported: dict[str, Any]
) -> None:
    check_expression(expr, exported, legend)


def test_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query, as recording rules, with the dashboard's
    variables replaced by what Grafana would put there."""
    variables = {
        "$__rate_interval": "1m",
        "$job": "reconciler",
        "$instance": ".*",
    }
    rules = []
    for panel in _panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in variables.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unknown variable in {target['expr']!r}"
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": expr}
            )
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool = ensure_debian("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_variable_queries_name_exported_metrics(exported: dict[str, Any]) -> None:
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
        assert match, f"unexpected variable query {query!r}"
        series, label = match.groups()
        check_expression(series, exported, f"{{{{{label}}}}}")


def test_tables_show_kind_and_name() -> None:
    for title in ("Drifted resources", "Failed resources"):
        panel = next(p for p in _panels() if p["title"] == title)
        assert panel["type"] == "table"
        assert panel["targets"][0]["format"] == "table"
        assert panel["targets"][0]["instant"] is True
        shown = next(
            t["options"]["include"]["names"]
            for t in panel["transformations"]
            if t["id"] == "filterFieldsByName"
        )
        assert {"kind", "name"} <= set(shown)


def test_provisioning_matches_the_compose_mounts() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/reconciler.yaml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    dashboard_mount = next(target for target in mounts if target.startswith(folder + "/"))
    assert mounts[dashboard_mount] == "./grafana/dashboard.json"
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
