"""deploy/prometheus: the alerting rules pass promtool's checks and their own unit
tests, query only what the daemon exports, and each links its runbook; the
Prometheus configuration of the compose stack is valid."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, OPERATIONS, check_expression, github_anchors
from tests.system import ensure_debian

RULES = DEPLOY / "prometheus" / "alerts.yaml"
ALERTS = (
    "ReconcilerResourceDrifted",
    "ReconcilerResourceFailed",
    "ReconcilerRevisionRejected",
    "ReconcilerSourceStale",
    "ReconcilerDown",
    "ReconcilerAbsent",
    "ReconcilerNotificationsFailing",
)


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = ensure_debian("promtool", "prometheus")
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent
    )


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_cover_every_alert_firing_and_not_firing() -> None:
    tests = yaml.safe_load((RULES.parent / "alerts.test.yaml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert firing == set(ALERTS)
    assert silent == set(ALERTS)


def test_promtool_check_config_of_the_compose_stack() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_compose_prometheus_scrapes_the_job_the_rules_expect() -> None:
    config = yaml.safe_load((RULES.parent / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "reconciler")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["reconciler:9108"]


def test_the_expected_alerts_and_no_others() -> None:
    assert [rule["alert"] for rule in _rules()] == list(ALERTS)


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_rule_queries_exported_metrics(rule: dict[str, Any], exported: dict[str, Any]) -> None:
    check_expression(rule["expr"], exported, *rule["annotations"].values())


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_rule_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("warning", "critical")
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page == "docs/operations.md"
    assert anchor == rule["alert"].lower()
    assert anchor in github_anchors(OPERATIONS.read_text()), f"no section #{anchor}"
    if rule["alert"] in ("ReconcilerResourceDrifted", "ReconcilerResourceFailed"):
        for field in ("summary", "description"):
            assert "{{ $labels.kind }}/{{ $labels.name }}" in annotations[field]
