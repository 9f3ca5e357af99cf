"""Shared by the deploy/ checks: paths, and what the daemon's /metrics exports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.fsm import State
from reconciler.metrics import FAMILIES, PHASES, Metrics, Snapshot
from reconciler.notifier import OUTCOMES
from tests.deploy import promql

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OPERATIONS = REPO / "docs" / "operations.md"

SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}
TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus adds to every scraped series."""
STATES = {state.value for state in State}
LABEL_VALUES = {
    "state": STATES - {State.GONE.value},  # a resource that is gone has no series
    "from_state": STATES | {"none"},
    "to_state": STATES,
    "phase": set(PHASES),
    "result": {"success", "error"},
    "outcome": set(OUTCOMES),
}
"""The values the enumerated labels take, for checking equality matchers."""


def family_of(name: str) -> str | None:
    """The FAMILIES entry a sample name belongs to: the name itself, a histogram's
    _bucket/_sum/_count, or a counter's _total if FAMILIES lists it without one.
    None for up, process_*, python_* and anything unknown."""
    if name in FAMILIES:
        return name
    for family, kind in FAMILIES.items():
        if any(name == family + suffix for suffix in SUFFIXES.get(kind, ())):
            return family
    return None


@pytest.fixture(scope="session")
def exported() -> dict[str, frozenset[str]]:
    """Every sample name a real daemon's exposition carries, with its label names:
    rendered by reconciler.metrics with every family populated, plus `up`, which
    Prometheus adds to every target."""
    snapshot = Snapshot(
        resources={"File/app-config": State.IN_SYNC, "Directory/reports": State.DRIFTED},
        revision="0a24eef47bcae0252bd2f4a77dae6cc343f4cdfb",
        head_rejected=True,
        last_fetch_success=1_700_000_000.0,
        interval=60.0,
        last_converged=1_700_000_000.0,
        queue_depth=1,
        notifications={("ops", outcome): 1 for outcome in OUTCOMES},
        notification_queue={"ops": 1},
    )
    metrics = Metrics(lambda: snapshot, version="0.0.0-test")
    metrics.transitions({("File", "InSync", "Detecting"): 1})
    metrics.phase("File", "detect", 0.01)
    metrics.applied("File", True)
    metrics.applied("File", False)
    metrics.drifted("File")
    metrics.pruned("File")
    metrics.fetched(True)
    metrics.rejected()
    text = metrics.render(snapshot).decode()
    samples: dict[str, set[str]] = {"up": set()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) | TARGET_LABELS for name, labels in samples.items()}


def check_expression(expr: str, exported: dict[str, frozenset[str]], *templates: str) -> None:
    """Assert that `expr` (and the legends or annotations in `templates`) names only
    metrics and labels the daemon exports."""
    found = promql.names(expr)
    assert found.selectors, f"no metric in {expr!r}"
    for name, labels in found.selectors:
        known = (
            family_of(name) is not None or name == "up" or name.startswith(("process_", "python_"))
        )
        assert known, f"{name} in {expr!r} is not in reconciler.metrics.FAMILIES"
        assert name in exported, f"{name} in {expr!r} is not in the daemon's exposition"
        missing = labels - exported[name]
        assert not missing, f"{name} has no label {sorted(missing)} (in {expr!r})"
    for label, value in re.findall(r'\b(\w+)\s*=\s*"([^"$]*)"', expr):
        if label in LABEL_VALUES:
            assert value in LABEL_VALUES[label], f'{label}="{value}" never matches (in {expr!r})'
    available: set[str] = set().union(*(exported[name] for name in found.metrics))
    unknown = found.grouping - available - {"le"}
    assert not unknown, f"grouping by {sorted(unknown)}, not a label of the series in {expr!r}"
    for template in templates:
        unknown = promql.template_labels(template) - available
        assert not unknown, f"{template!r} uses {sorted(unknown)}, not a label of {expr!r}"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of the headings of a Markdown document."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6}\s+(.*)", line)):
            title = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors
