"""/metrics end to end: the real daemon's exposition (checked by promtool), and
Prometheus from Debian's package scraping it while a managed file drifts and is
restored by hand, seen through Prometheus' own query API."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.metrics import FAMILIES
from tests.e2e.daemon_harness import DaemonProcess, Daemons, docs, file_doc, wait_until
from tests.gitservers import GitRepos, WorkClone
from tests.prometheus import Prometheus
from tests.system import ensure_debian


def scrape(daemon: DaemonProcess) -> str:
    response = daemon.request("GET", "/metrics")
    assert response.status == 200, response.body[:500]
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.body.decode()


def sample(text: str, family: str, /, **labels: str) -> float | None:
    for metric in text_string_to_metric_families(text):
        for s in metric.samples:
            if s.name == family and s.labels == labels:
                return float(s.value)
    return None


@pytest.mark.timeout(900)  # the first use may install Debian's prometheus package
def test_the_daemons_exposition_follows_revisions_and_passes_promtool(
    repos: GitRepos, work: WorkClone, root: Path, daemons: Daemons
) -> None:
    promtool = ensure_debian("promtool", "prometheus")
    a, b = root / "a.conf", root / "b.conf"
    first = work.commit(
        "two files", {"app.yaml": docs(file_doc("a", a, "a\n"), file_doc("b", b, "b\n"))}
    )
    work.push()
    daemon = daemons.start(repos.file_url(), root=root)
    daemon.wait_revision(first)
    text = scrape(daemon)
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert sample(text, "reconciler_resource_state", kind="File", name="b", state="InSync") == 1
    assert sample(text, "reconciler_resources", kind="File", state="InSync") == 2
    assert sample(text, "reconciler_source_revision_info", revision=first) == 1
    assert sample(text, "reconciler_apply_total", kind="File", result="success") == 2
    assert sample(text, "reconciler_source_fetch_total", result="success") == 1
    assert sample(text, "reconciler_source_head_rejected") == 0
    assert sample(text, "reconciler_build_info", version="0.1.0") == 1
    assert (sample(text, "reconciler_last_converged_timestamp_seconds") or 0) > time.time() - 120
    exported = {f.name for f in text_string_to_metric_families(text)}
    assert {n.removesuffix("_total") for n in FAMILIES} <= exported
    assert "process_resident_memory_bytes" in exported

    # b leaves git: its series go with it; the old revision's info series too
    second = work.commit("only a", {"app.yaml": docs(file_doc("a", a, "a\n"))})
    work.push()
    daemon.sync()
    daemon.wait_revision(second)
    text = scrape(daemon)
    assert 'name="b"' not in text
    assert first not in text
    assert sample(text, "reconciler_source_revision_info", revision=second) == 1
    assert sample(text, "reconciler_prune_total", kind="File") == 1

    # an invalid commit: rejected, counted, flagged; the last good revision stays
    work.commit("broken", {"app.yaml": "kind: File\nmetadata: [\n"})
    work.push()
    daemon.sync()
    daemon.wait_until(
        lambda: sample(scrape(daemon), "reconciler_source_head_rejected") == 1,
        "the rejected head to show in /metrics",
    )
    text = scrape(daemon)
    assert sample(text, "reconciler_revision_rejected_total") == 1
    assert sample(text, "reconciler_source_revision_info", revision=second) == 1
    daemon.stop()


@pytest.mark.timeout(900)  # the first use may install Debian's prometheus package
def test_prometheus_sees_drift_under_warn_come_and_go(
    repos: GitRepos, work: WorkClone, root: Path, daemons: Daemons, tmp_path: Path
) -> None:
    motd = root / "motd"
    sha = work.commit(
        "warn only",
        {"app.yaml": docs(file_doc("motd", motd, "hello\n", policy={"drift": "warn"}))},
    )
    work.push()
    daemon = daemons.start(repos.file_url(), root=root)
    daemon.wait_revision(sha)
    daemon.settle()
    target = f"127.0.0.1:{daemon.port}"
    prometheus = Prometheus(
        tmp_path / "prometheus",
        lambda port: {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "reconciler", "static_configs": [{"targets": [target]}]}
            ],
        },
    )
    try:
        drifted = 'reconciler_resource_drifted{kind="File",name="motd"}'
        timeout = 60.0  # the first scrape lands some seconds after start
        wait_until(
            lambda: prometheus.value('up{job="reconciler"}') == 1, "target up", timeout=timeout
        )
        wait_until(lambda: prometheus.value(drifted) == 0, f"{drifted} == 0", timeout=timeout)

        motd.write_text("edited by hand\n")
        wait_until(lambda: prometheus.value(drifted) == 1, f"{drifted} == 1", timeout=timeout)
        assert motd.read_text() == "edited by hand\n"  # warn: reported, not healed
        state = prometheus.value(
            'reconciler_resource_state{kind="File",name="motd",state="Drifted"}'
        )
        assert state == 1
        assert (prometheus.value('reconciler_drift_detected_total{kind="File"}') or 0) >= 1

        motd.write_text("hello\n")
        wait_until(lambda: prometheus.value(drifted) == 0, f"{drifted} back to 0", timeout=timeout)
    finally:
        prometheus.close()
    daemon.stop()
