"""The monitoring half of deploy/ against the real thing: Debian's Prometheus,
with the compose stack's prometheus.yml (pointed at 127.0.0.1 and sped up) and
alerts.yaml as shipped, scrapes a real daemon that manages one file in sync, one
drifted under `drift: warn` and one that fails. Every alert rule evaluates
without error, the two resource alerts go pending for exactly those resources
(their `for` is minutes, so pending is as far as a test goes) and no other
alert does, and every dashboard query runs on Prometheus, returning data where
the daemon has any."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.test_prometheus import ALERTS
from tests.e2e.daemon_harness import Daemons, docs, file_doc, wait_until
from tests.prometheus import Prometheus

DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$job": "reconciler", "$instance": ".*"}
NO_DATA = {
    ("Last converged", "A"): "a resource is Failed, so no pass has ended with nothing failed",
    ("Drift detected and prunes", "B"): "nothing was pruned",
}


def _stack_prometheus(workdir: Path, target: str) -> Prometheus:
    """Prometheus with deploy/prometheus's configuration and rules, pointed at
    `target` and sped up."""

    def config(port: int) -> Any:
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        for job in config["scrape_configs"]:
            own = {"reconciler": target, "prometheus": f"127.0.0.1:{port}"}[job["job_name"]]
            job["static_configs"] = [{"targets": [own]}]
        return config

    workdir.mkdir(parents=True)
    shutil.copy(DEPLOY / "prometheus" / "alerts.yaml", workdir)  # as shipped
    return Prometheus(workdir, config)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    with Daemons(tmp_path / "daemons") as factory:
        yield factory


def _pending(prometheus: Prometheus) -> set[tuple[str, str, str]]:
    return {
        (a["labels"]["alertname"], a["labels"].get("kind", ""), a["labels"].get("name", ""))
        for a in prometheus.api("alerts")["alerts"]
    }


@pytest.mark.timeout(900)  # the first use may install Debian's prometheus package
def test_rules_and_dashboard_on_prometheus_scraping_a_daemon(
    tmp_path: Path, daemons: Daemons
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "blocker").write_text("a file where a directory should be\n")
    config = tmp_path / "config"  # local mode: a plain directory
    config.mkdir()
    (config / "files.yaml").write_text(
        docs(
            file_doc("ok", root / "ok.txt", "ok\n"),
            file_doc("warned", root / "warned.txt", "git\n", policy={"drift": "warn"}),
            file_doc("broken", root / "blocker" / "broken.txt", "never\n"),
        )
    )
    daemon = daemons.start(config, root=root)
    daemon.wait_state("File/broken", "Failed")
    daemon.settle()
    (root / "warned.txt").write_text("by hand\n")
    daemon.wait_state("File/warned", "Drifted")

    prometheus = _stack_prometheus(tmp_path / "prometheus", f"127.0.0.1:{daemon.port}")
    try:
        # Exactly these two: ReconcilerAbsent may be pending for the evaluations
        # before the first scrape lands (a few seconds on a loaded machine), and
        # must be gone once `up` exists.
        wait_until(
            lambda: (
                _pending(prometheus)
                == {
                    ("ReconcilerResourceDrifted", "File", "warned"),
                    ("ReconcilerResourceFailed", "File", "broken"),
                }
            ),
            "exactly the resource alerts to be pending",
            timeout=60,
        )
        assert {a["state"] for a in prometheus.api("alerts")["alerts"]} == {"pending"}

        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == len(ALERTS)
        for rule in rules:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))

        dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
        scrapes = 'reconciler_queue_depth{job="reconciler"}'
        wait_until(  # rate() over the panel's range needs two scrapes
            lambda: prometheus.api("query", query=f"count_over_time({scrapes}[1m]) >= 3")["result"],
            "three scrapes",
            timeout=60,
        )
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in DASHBOARD_VARIABLES.items():
                    expr = expr.replace(variable, value)
                result = prometheus.api("query", query=expr)["result"]
                key = (panel["title"], target["refId"])
                assert bool(result) != (key in NO_DATA), (key, expr, result)
    finally:
        prometheus.close()
    daemon.stop()
